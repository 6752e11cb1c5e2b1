import copy
import json

import pytest
import torch

import course_lib
from course_lib import real_model
from course_lib.real_model import (brown_document, brown_split, detokenize, prepare_text, quantisation_ties,
                                   rebuild_plain_model, strip_tag, text_sha256)
from conftest import ROOT, tiny_model

REAL_JSON = ROOT / "data" / "results" / "pruning_quality_real.json"
FORM_C = (
    "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ./.\n"
    "\n\n\tIt/pps cost/vbd $/$ 5/cd (/( or/cc more/ap )/) ,/, didn't/dod* it/pps ?/.\n"
)


# ----------------------------------------------------------------------------- Brown text

def test_strip_tag_keeps_the_word_before_the_last_slash():
    assert strip_tag("Atlanta's/np$") == "Atlanta's"
    assert strip_tag("1/2/cd") == "1/2"
    with pytest.raises(ValueError, match="word/tag"):
        strip_tag("notag")


def test_detokenize_glues_punctuation_and_quotes():
    assert detokenize(["He", "said", "``", "yes", "''", ",", "then", "left", "."]) == 'He said "yes", then left.'
    assert detokenize(["(", "a", ")", "b"]) == "(a) b"


def test_brown_document_strips_tags_and_joins_sentences():
    assert brown_document(FORM_C) == 'The jury said "no evidence" was found. It cost $5 (or more), didn\'t it?'
    with pytest.raises(ValueError, match="no sentences"):
        brown_document("\n\n")


def test_brown_split_is_disjoint_and_covers_every_genre():
    names = [f"c{g}{i:02d}" for g in "abk" for i in range(1, 12)]
    split = brown_split(reversed(names))
    assert set(split["eval"]).isdisjoint(split["calib"])
    assert sorted(split["eval"] + split["calib"]) == sorted(names)
    assert {n[1] for n in split["eval"]} == set("abk")
    assert split["eval"][:3] == ["ca01", "ca06", "ca11"]
    with pytest.raises(ValueError, match="Brown sample names"):
        brown_split(["ca01", "README"])


def test_prepare_text_writes_both_splits_and_checks_their_sha256(tmp_path):
    src = tmp_path / "brown"
    src.mkdir()
    for i in range(1, 8):
        (src / f"ca{i:02d}").write_text(FORM_C.replace("jury", f"jury{i}"), encoding="utf-8")
    (src / "README").write_text("not a sample")
    digests = prepare_text(src, tmp_path / "text")
    evals = json.loads((tmp_path / "text" / "eval.json").read_text())
    calib = json.loads((tmp_path / "text" / "calib.json").read_text())
    assert evals["names"] == ["ca01", "ca06"] and len(calib["names"]) == 5
    assert digests["eval"] == text_sha256(evals["documents"]) == evals["sha256"]
    assert "jury1 said" in evals["documents"][0]
    with pytest.raises(ValueError, match="SHA-256"):
        prepare_text(src, tmp_path / "other", expected={"eval": "0" * 64})
    assert not (tmp_path / "other").exists()


def test_verify_sha256(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    real_model.verify_sha256(f, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "x")
    with pytest.raises(ValueError, match="expected"):
        real_model.verify_sha256(f, "0" * 64, "x")


# ----------------------------------------------------------------------------- the model

def _smollm_like(seed=0):
    """A random tiny model with SmolLM2's peculiarities: 9 query heads on 3 KV heads, tied embeddings."""
    return tiny_model("gqa", seed=seed, hidden_size=288, num_attention_heads=9, num_key_value_heads=3,
                      head_dim=32, tie_word_embeddings=True)


def test_rebuild_plain_model_drops_quantisation_and_round_trips(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_smollm_like().config)
    model.load_state_dict(_smollm_like().state_dict())
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    plain = rebuild_plain_model(model)
    assert not hasattr(plain.config, "quantization_config") or plain.config.quantization_config is None
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    plain.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(again.eval()(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_quantisation_ties_of_q4_like_and_float_weights():
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (8, 64), generator=gen).float()  # 4-bit codes
    d, m = torch.rand(8, 2, 1, generator=gen) + 0.1, torch.randn(8, 2, 1, generator=gen)
    w = (q.view(8, 2, 32) * d + m).view(8, 64)  # Q4_1: d * q + m per block of 32
    ties = quantisation_ties(w)
    assert ties["distinct_per_block"] <= 16
    assert ties["nm_tie_fraction"] > 0.05
    plain = quantisation_ties(torch.randn(8, 64, generator=gen))
    assert plain["distinct_per_block"] == 32 and plain["nm_tie_fraction"] == 0
    assert plain["threshold_tie_fraction"] == pytest.approx(1 / 512)
    with pytest.raises(ValueError, match="divisible"):
        quantisation_ties(torch.randn(4, 30))


def test_every_pruner_runs_on_a_smollm_like_model():
    """The calls of scripts/pruning_quality.py --model real, on a tiny model shaped like SmolLM2."""
    from course_lib.data import batches
    from course_lib.pruning.channels import channel_importance, remove_ffn_channels
    from course_lib.pruning.heads import head_importance, remove_heads
    from course_lib.pruning.nm import is_nm_sparse
    from scripts.pruning_quality import head_plan, prune

    model = _smollm_like()
    stream = torch.randint(0, 97, (600,))
    calib = batches(tokens=stream, n_batches=2, batch_size=2, seq_len=32)
    dense = course_lib.perplexity(model, tokens=stream, seq_len=64)
    for method in ("magnitude-layer", "magnitude-global", "wanda", "sparsegpt"):
        twin = copy.deepcopy(model)
        prune(twin, method, calib, sparsity=0.5)
        assert course_lib.pruning.common.model_sparsity(twin)["global"] == pytest.approx(0.5, abs=1e-3)
        if method != "magnitude-global":
            twin = copy.deepcopy(model)
            prune(twin, method, calib, n=2, m=4)
            assert all(is_nm_sparse(mod.weight, 2, 4) for mod in course_lib.prunable_linears(twin).values())
        assert twin.lm_head.weight.data_ptr() == twin.model.embed_tokens.weight.data_ptr()
        assert torch.isfinite(torch.tensor(course_lib.perplexity(twin, tokens=stream, seq_len=64)))
    scores = head_importance(model, calib, method="gradient")
    plan = head_plan(scores, n_kv=3, fraction=0.2)  # round(0.2 * 18 / 3) = 1 layer
    assert len(plan) == 1 and all(sorted(h // 3 for h in v) == [0, 1, 2] for v in plan.values())
    twin = copy.deepcopy(model)
    remove_heads(twin, plan)
    channels = {i: list(range(0, 96, 3)) for i in range(2)}
    remove_ffn_channels(twin, channels)
    assert twin.model.layers[0].mlp.up_proj.out_features == 64
    assert dense < 200 and torch.isfinite(torch.tensor(course_lib.perplexity(twin, tokens=stream, seq_len=64)))
    assert channel_importance(model, calib, method="activation").shape == (2, 96)


# ----------------------------------------------------------------------------- the real artefacts

needs_real = pytest.mark.skipif(not real_model.real_model_available(),
                                reason="the real model is not prepared (run `make real-model`)")


@needs_real
def test_prepared_text_matches_the_pinned_sha256():
    for split in real_model.SPLITS:
        assert text_sha256(real_model.real_documents(split)) == real_model.TEXT_SHA256[split]


@needs_real
def test_prepared_model_is_smollm2_135m():
    import transformers

    config = transformers.AutoConfig.from_pretrained(real_model.real_model_dir())
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.vocab_size, config.tie_word_embeddings) == (30, 576, 9, 3, 1536, 49152, True)
    tok = transformers.AutoTokenizer.from_pretrained(real_model.real_model_dir())
    assert tok.convert_tokens_to_ids(real_model.SEPARATOR) == 0 and tok.bos_token == "<|im_start|>"


# ----------------------------------------------------------------------------- the committed JSON

@pytest.fixture(scope="module")
def real_json():
    return json.loads(REAL_JSON.read_text())


def _ppl(res, method, pattern):
    return next(r["ppl"] for r in res["results"] if r["method"] == method and r["pattern"] == pattern)


def test_committed_real_json_orders_as_measured(real_json):
    res = real_json
    dense = res["dense_ppl"]
    for pattern in ("unstructured", "2:4"):
        mag, wanda, sgpt = (_ppl(res, m, pattern) for m in ("magnitude-layer", "wanda", "sparsegpt"))
        # on a real LLM both calibrated methods beat magnitude by far (factor > 2), as in Sun et al. 2023
        assert dense < sgpt < wanda < mag / 2, (pattern, dense, mag, wanda, sgpt)
    for m in ("magnitude-layer", "wanda", "sparsegpt"):
        assert _ppl(res, m, "unstructured") < _ppl(res, m, "2:4")
    # real outlier features: input norms far from uniform on the real model, not on the course model
    real = res["input_norm_max_over_median"]
    course = res["course_model_reference"]["input_norm_max_over_median"]
    assert max(v["max_over_layers"] for v in real.values()) > 3 * max(v["max_over_layers"] for v in course.values())
    # Q4_1: at most 16 distinct values per block of 32; the float course model has 32
    assert all(v["distinct_per_block"] <= 16 for v in res["quantisation_ties"].values())
    assert all(v["distinct_per_block"] > 31 for v in res["course_model_reference"]["quantisation_ties"].values())
    assert all(r["ppl"] > dense for r in res["structured"])


def test_committed_real_json_calibration_curve(real_json):
    curve = real_json["calibration_curve"]
    sizes = sorted({r["calib_tokens"] for r in curve})
    assert len(sizes) >= 3
    by = {(r["method"], r["calib_tokens"]): r["ppl"] for r in curve}
    # SparseGPT fits far more parameters to the calibration data than Wanda: it gains more from more data
    gain = {m: by[(m, sizes[0])] / by[(m, sizes[-1])] for m in ("wanda", "sparsegpt")}
    assert gain["sparsegpt"] > gain["wanda"]
    assert by[("sparsegpt", sizes[-1])] < by[("wanda", sizes[-1])]


def test_measure_real_on_a_tiny_model_restores_it():
    from scripts.pruning_quality import measure_real

    model = _smollm_like()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stream = torch.randint(0, 97, (700,))
    settings = dict(eval_tokens=128, seq_len=64, calib_tokens=128, calib_seq_len=32, seed=0, curve_tokens=(64, 128),
                    structure_tokens=64, heads_fraction=0.25, ffn_fraction=0.30)
    res = measure_real(model, stream[:300], stream[300:], settings, log=lambda *a: None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {(r["method"], r["pattern"]) for r in res["results"]} >= {("wanda", "2:4"), ("sparsegpt", "unstructured")}
    assert [r["calib_tokens"] for r in res["calibration_curve"]] == [64, 64, 128, 128]
    assert res["structured"][1]["channels_removed_per_layer"] == round(0.3 * 96)
    assert set(res["input_norm_max_over_median"]) == set(course_lib.model.DECODER_LINEARS)
