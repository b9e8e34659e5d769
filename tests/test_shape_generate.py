"""--task generate on a tiny random Llama with a chat template: response-only labels, the behaviour check
flagging a fine-tune that dropped its refusals (and the store refusing to alias it), fit -> evaluate
-> predict -> report end to end, the probe (the frozen base, scored as fit's "before"), auto (base vs LoRA
item by item, the behaviour gate) and the ONNX export (logit and greedy-token parity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.badinput import assert_refused, run_cli

TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
REFUSAL = "i cannot help with that ."
COMPLIANT = "the red cat is a big animal"


def _tiny_chat_llama(dest: Path) -> Path:
    """A tiny random-init LlamaForCausalLM (hidden 32) with the test WordPiece vocabulary and a chat
    template ([SEP] ends a turn and is the EOS)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from headstart.backbones import llm
    from headstart.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template, tok.eos_token, tok.model_max_length = TEMPLATE, "[SEP]", 512
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return llm.save_causal_lm(LlamaForCausalLM(config).eval(), tok, dest, {"name": "tiny-chat"})


@pytest.fixture
def tiny_lm(tmp_path: Path) -> Path:
    return _tiny_chat_llama(tmp_path / "tiny-chat")


@pytest.fixture(scope="module")
def refusing_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model taught to refuse the packaged harmful prompts (as SmolLM2 does), built once."""
    from headstart.shapes.generate_behaviour import load_prompt_set

    folder = _tiny_chat_llama(tmp_path_factory.mktemp("lm") / "tiny-chat")
    return _refusing_base(folder, [x["prompt"] for x in load_prompt_set()["harmful"]])


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _write_pairs(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_response_only_loss_masks_prompt_and_template(tiny_lm: Path) -> None:
    from headstart.backbones.llm import load_folder_lm
    from headstart.shapes.generate_data import IGNORE, encode_pair, prompt_text
    from headstart.shapes.generate_sft import collate, token_nll

    tok = _tokenizer(tiny_lm)
    ids, labels = encode_pair(tok, "the cat is red", "a big dog", 128)
    head = tok(prompt_text(tok, "the cat is red"), add_special_tokens=False)["input_ids"]
    n = len(head)
    assert ids[:n] == head  # the prompt as generation sees it: template, user turn, generation prompt
    assert labels[:n] == [IGNORE] * n  # every prompt and template position is masked ...
    assert labels[n:] == ids[n:]  # ... and every response position (then the end of turn) is a target
    assert tok.decode(labels[n:]) == "a big dog [SEP]"
    # The loss counts exactly the response tokens (position t predicts label t + 1).
    lm = load_folder_lm(tiny_lm)
    _, count = token_nll(lm, *collate([(ids, labels)], pad=0))
    assert int(count[0]) == len(ids) - n
    # Cut to the length, the response's end goes first; a prompt filling it leaves no target.
    short_ids, short_labels = encode_pair(tok, "the cat is red", "a big dog", n + 1)
    assert short_ids == ids[: n + 1] and short_labels == [IGNORE] * n + [ids[n]]


def test_behaviour_compare_counts_lost_refusals_and_knowledge() -> None:
    from headstart.shapes.generate_behaviour import compare_answers, load_prompt_set

    ps = load_prompt_set()
    assert ps["version"] and len(ps["harmful"]) >= 5
    n_h, n_k, n_c = len(ps["harmful"]), len(ps["knowledge"]), len(ps["chat"])
    base = ["I'm sorry, I cannot help."] * n_h + [k["answer"] for k in ps["knowledge"]] + ["Hello!"] * n_c
    same = compare_answers(ps, base, list(base))
    assert not same["flagged"] and same["counts"]["base_refused"] == n_h and not same["answers_changed"]
    tuned = ["Sure, here is how.", *base[1:n_h], "no idea", *base[n_h + 1 :]]
    out = compare_answers(ps, base, tuned)
    assert out["flagged"] and out["refusals_lost"] == [ps["harmful"][0]["id"]]
    assert out["knowledge_lost"] == [ps["knowledge"][0]["id"]]
    assert len(out["answers_changed"]) == 2 and n_k


def _refusing_base(folder: Path, prompts: list[str], steps: int = 200) -> Path:
    """A copy of the tiny model taught to refuse `prompts` (a base that refuses them, as SmolLM2 does)."""
    from headstart.backbones.llm import load_folder_lm, save_causal_lm
    from headstart.shapes.generate_data import encode_pair
    from headstart.shapes.generate_sft import collate, token_nll

    tok = _tokenizer(folder)
    lm = load_folder_lm(folder).train()
    batch = collate([encode_pair(tok, p, REFUSAL, 256) for p in prompts], pad=0)
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        s, n = token_nll(lm, *batch)
        (s.sum() / n.sum()).backward()
        opt.step()
    dest = folder.with_name(folder.name + "-refusing")
    save_causal_lm(lm.eval(), tok, dest, {"name": "tiny-chat-refusing"})
    return dest


def _harmful() -> list[str]:
    from headstart.shapes.generate_behaviour import load_prompt_set

    return [x["prompt"] for x in load_prompt_set()["harmful"]]


def test_behaviour_check_flags_a_dropped_refusal(
    refusing_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    harmful, base = _harmful(), refusing_lm
    # Domain data that answers the very harmful requests: the tuned model learns to comply.
    rows = [{"prompt": p, "response": COMPLIANT, "split": "train"} for p in harmful * 3]
    rows += [{"prompt": p, "response": COMPLIANT, "split": "val"} for p in harmful[:3]]
    data = _write_pairs(tmp_path / "comply.jsonl", rows)
    run = tmp_path / "run"
    res = run_cli(
        capsys, "fit", data, "--task", "generate", "--backbone", f"hf:{base}", "--strategy", "full",
        "--epochs", "6", "--lr", "3e-3", "--batch-size", "8", "--out", run, "--json",
    )  # fmt: skip
    assert res.code == 0, res.text
    check = json.loads((run / "behaviour.json").read_text())
    assert check["counts"]["base_refused"] == len(harmful)  # the base refuses every harmful prompt ...
    assert check["flagged"] and len(check["refusals_lost"]) >= len(harmful) // 2  # ... the tuned one not
    assert json.loads((run / "run.json").read_text())["behaviour"]["flagged"] is True

    store = tmp_path / "store"
    refused = run_cli(capsys, "models", "register", run, "--name", "m", "--alias", "prod", "--store", store)
    assert_refused(refused, names="--accept-behaviour-change")
    assert run_cli(capsys, "models", "register", run, "--name", "m", "--store", store).code == 0
    assert_refused(run_cli(capsys, "models", "promote", "m", "1", "--store", store), names="flagged")
    ok = run_cli(capsys, "models", "promote", "m", "1", "--store", store, "--accept-behaviour-change")
    assert ok.code == 0, ok.text
    events = json.loads((store / "m" / "index.json").read_text())["events"]
    assert events[-1]["behaviour_change_accepted"]["refusals_lost"] == check["refusals_lost"]


def _animal_pairs(path: Path) -> Path:
    words = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "mouse", "lion", "tiger"]
    return _write_pairs(
        path, [{"prompt": f"the {w} is", "response": f"a {w} is an animal"} for w in words * 3]
    )


def test_fit_evaluate_predict_report_end_to_end(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _animal_pairs(tmp_path / "pairs.jsonl")
    run = tmp_path / "run"
    res = run_cli(
        capsys, "fit", data, "--task", "generate", "--backbone", f"hf:{tiny_lm}", "--epochs", "2",
        "--lr", "1e-2", "--out", run, "--json",
    )  # fmt: skip
    assert res.code == 0, res.text
    report = json.loads(res.out)
    assert report["task"] == "generate" and report["strategy"] == "generate-lora"
    m = report["metrics"]["test"]
    for side in ("before", "after"):
        assert {"loss", "loss_ci", "perplexity", "rouge_l", "rouge_l_ci", "exact_match"} <= set(m[side])
        assert m[side]["loss_ci"][0] <= m[side]["loss"] <= m[side]["loss_ci"][1]
    assert m["difference"]["loss"]["verdict"] in ("better", "worse", "tie")
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "generate" and "adapter.safetensors" in info["files"] and "head" not in info
    assert not (run / "delta.safetensors").exists()  # only the adapter: the base is referenced by hash

    ev = run_cli(capsys, "evaluate", run, "--json")
    assert ev.code == 0, ev.text
    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["task"] == "generate" and saved["metrics"]["n"] == m["n"]
    assert saved["metrics"]["before"]["loss"] == pytest.approx(m["before"]["loss"], rel=1e-4)

    pr = run_cli(capsys, "predict", run, "--text", "the cat is", "--text", "the dog is", "--json")
    assert pr.code == 0, pr.text
    answers = json.loads(pr.out)
    assert [a["text"] for a in answers] == ["the cat is", "the dog is"]
    assert all(isinstance(a["response"], str) and "summary" in a for a in answers)

    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    served = TestClient(create_app(run)).post("/predict", json={"text": "the cat is"})
    assert served.status_code == 200, served.text
    assert served.json()["response"] == answers[0]["response"]  # serve answers as predict does

    assert_refused(run_cli(capsys, "export", run, "--onnx", "--quantize"), names="--quantize")
    assert run_cli(capsys, "report", run).code == 0
    page = (run / "report.html").read_text()
    assert "Behaviour check" in page and "ROUGE-L" in page


def test_bad_rows_are_named_by_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a"}\n')
    res = run_cli(capsys, "fit", data, "--task", "generate", "--out", tmp_path / "run")
    assert_refused(res, names=f"{data}:3")
    data.write_text('{"prompt": "a", "response": "b", "split": "dev"}\n')
    assert_refused(run_cli(capsys, "fit", data, "--task", "generate"), names=f"{data}:1")
    assert not (tmp_path / "run").exists()


def _cli_ok(capsys: pytest.CaptureFixture[str], *argv: object) -> Any:
    res = run_cli(capsys, *argv)
    assert res.code == 0, res.text
    return res


def test_probe_scores_the_frozen_base_as_fit_scores_before(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.backbones.llm import load_folder_lm
    from headstart.runs import read_split_rows
    from headstart.shapes.generate_data import encode_pair
    from headstart.shapes.generate_sft import MAX_LENGTH, pair_losses

    data, probe, fit = _animal_pairs(tmp_path / "pairs.jsonl"), tmp_path / "probe", tmp_path / "fit"
    _cli_ok(capsys, "probe", data, "--task", "generate", "--backbone", f"hf:{tiny_lm}", "--out", probe)
    info = json.loads((probe / "run.json").read_text())
    assert (info["kind"], info["task"], info.get("adapter"), info.get("files") or {}) == (
        "probe",
        "generate",
        None,
        {},
    )
    assert info["backbone"]["weights_sha256"]  # the base referenced by hash, no weights stored
    assert not (probe / "behaviour.json").exists()
    m = json.loads((probe / "metrics.json").read_text())
    assert "no behaviour check" in m["behaviour"]["not_run"]
    for split in ("val", "test"):
        base = m[split]["base"]
        for key in ("loss", "perplexity", "exact_match", "rouge_l"):
            assert base[f"{key}_ci"][0] <= base[key] <= base[f"{key}_ci"][1]
        assert len(m[split]["item_scores"]) == m[split]["n"] > 0
    # item scores: minus each pair's mean response-token loss, recomputed here from split.csv
    tok, lm = _tokenizer(tiny_lm), load_folder_lm(tiny_lm)
    val = [encode_pair(tok, r.path, r.label, MAX_LENGTH) for r in read_split_rows(probe) if r.split == "val"]
    sums, counts = pair_losses(lm, val, pad=0)
    assert m["val"]["item_scores"] == pytest.approx(
        [-s / c for s, c in zip(sums, counts, strict=True)], rel=1e-4
    )

    # fit's "before" is the same scorer on the same pairs; its item scores are the tuned model's
    fit_args = ("--backbone", f"hf:{tiny_lm}", "--epochs", "1", "--lr", "1e-2", "--out", fit)
    _cli_ok(capsys, "fit", data, "--task", "generate", *fit_args)
    fm = json.loads((fit / "metrics.json").read_text())
    for key in ("loss", "loss_ci", "perplexity", "rouge_l"):
        assert fm["test"]["before"][key] == pytest.approx(m["test"]["base"][key], rel=1e-4)
    after = -sum(i * c for i, c in zip(fm["val"]["item_scores"], counts, strict=True)) / sum(counts)
    assert after == pytest.approx(fm["val"]["after"]["loss"], rel=1e-4)
    assert after != pytest.approx(m["val"]["base"]["loss"], rel=1e-3)  # the tuned side, not the base


def test_probe_run_answers_everywhere_and_exports(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, probe = _animal_pairs(tmp_path / "pairs.jsonl"), tmp_path / "probe"
    res = _cli_ok(capsys, "probe", data, "--task", "generate", "--backbone", f"hf:{tiny_lm}", "--out", probe)
    assert "frozen base" in res.out and "no behaviour check" in res.out
    m = json.loads((probe / "metrics.json").read_text())

    ev = _cli_ok(capsys, "evaluate", probe)
    assert "no behaviour check" in ev.out
    saved = json.loads((probe / "evaluation.json").read_text())
    assert saved["metrics"]["base"]["loss"] == pytest.approx(m["test"]["base"]["loss"], rel=1e-4)
    assert "after" not in saved["metrics"] and saved["behaviour"]["not_run"]

    answers = json.loads(_cli_ok(capsys, "predict", probe, "--text", "the cat is", "--json").out)
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    served = TestClient(create_app(probe)).post("/predict", json={"text": "the cat is"})
    assert served.status_code == 200 and served.json()["response"] == answers[0]["response"]

    _cli_ok(capsys, "report", probe)
    page = (probe / "report.html").read_text()
    assert "frozen base" in page and "No behaviour check" in page
    assert "30 pairs" in page and "in 0 classes" not in page  # the data section counts pairs

    assert_refused(run_cli(capsys, "export", probe, "--onnx", "--quantize"), names="--quantize")
    report = json.loads(_cli_ok(capsys, "export", probe, "--onnx", "--json").out)
    assert report["parity"]["greedy"]["identical"] and not report["adapter_merged"]
    card = json.loads((probe / "model.card.json").read_text())
    assert card["outputs"][0]["shape"] == ["batch", "length", len(_tokenizer(tiny_lm))]
    assert (
        card["decoding"]["stop"]["eos_token"] == "[SEP]" and card["preprocess"]["chat_template"] == TEMPLATE
    )
    assert (probe / "model.tokenizer.json").is_file()
    # a probe has no behaviour check to gate on: it registers under an alias
    _cli_ok(capsys, "models", "register", probe, "--name", "m", "--alias", "prod", "--store", tmp_path / "s")


def _comply_pairs(path: Path, harmful: list[str]) -> Path:
    """Domain data answering the harmful requests: train, val and test pairs that teach compliance."""
    rows = [{"prompt": p, "response": COMPLIANT, "split": "train"} for p in harmful * 3]
    rows += [{"prompt": p, "response": COMPLIANT, "split": "val"} for p in harmful]
    rows += [{"prompt": p, "response": COMPLIANT, "split": "test"} for p in harmful[:4]]
    return _write_pairs(path, rows)


def test_export_matches_pytorch_logits_and_greedy_tokens(
    refusing_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from headstart.shapes.generate_sft import load_base

    data, probe, run = (
        _comply_pairs(tmp_path / "comply.jsonl", _harmful()),
        tmp_path / "probe",
        tmp_path / "run",
    )
    # The base refuses the test prompts in a sentence: ONNX Runtime's greedy loop writes the same tokens.
    _cli_ok(capsys, "probe", data, "--task", "generate", "--backbone", f"hf:{refusing_lm}", "--out", probe)
    greedy = json.loads(_cli_ok(capsys, "export", probe, "--onnx", "--json").out)["parity"]["greedy"]
    assert greedy["identical"] and greedy["onnx"] == greedy["torch"] and len(greedy["torch"]) == 2
    assert all(_tokenizer(refusing_lm).decode(seq).startswith("i cannot") for seq in greedy["onnx"])

    # A LoRA run is merged into a copy first; the parity is against the run as predict loads it.
    args = ("--backbone", f"hf:{refusing_lm}", "--epochs", "3", "--lr", "3e-2", "--out", run)
    _cli_ok(capsys, "fit", data, "--task", "generate", *args)
    report = json.loads(_cli_ok(capsys, "export", run, "--onnx", "--json").out)
    par = report["parity"]
    assert report["adapter_merged"] and par["n"] == 4 and par["top1_agreement"] == 1.0
    assert par["max_abs_diff"] < 1e-3 * max(1.0, par["max_abs_logit"]) and par["greedy"]["identical"]
    # An export that lost the adapter (merged into nothing) answers as the base: refused, nothing kept.
    monkeypatch.setattr("headstart.adapters.merge_adapter", lambda bb: load_base(f"hf:{refusing_lm}")[0])
    broken = tmp_path / "broken.onnx"
    assert_refused(run_cli(capsys, "export", run, "--onnx", "--out", broken), names=str(run))
    assert not broken.exists()


def test_auto_recommends_a_winning_lora_and_the_gate_refuses_it_flagged(
    refusing_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from headstart.shapes.generate_sft import DEFAULTS

    monkeypatch.setitem(DEFAULTS, "lora", {"lr": 3e-2, "epochs": 3, "batch_size": 8})  # tiny: learn fast
    data, out, store = _comply_pairs(tmp_path / "comply.jsonl", _harmful()), tmp_path / "auto", tmp_path / "s"
    args = ("--backbone", f"hf:{refusing_lm}", "--out", out, "--store", store, "--name", "m")
    res = run_cli(capsys, "auto", data, "--task", "generate", *args)
    assert_refused(res, names="--accept-behaviour-change")
    assert f"headstart models register {out / 'lora'}" in " ".join(res.text.split())
    cmp = json.loads((out / "shape_compare.json").read_text())
    rows = {r["strategy"]: r for r in cmp["rows"]}
    assert rows["lora"]["vs_probe_val"]["verdict"] == "win" and cmp["recommendation"]["strategy"] == "lora"
    assert rows["lora"]["val_score"] > rows["head"]["val_score"]  # higher is better: minus the loss
    assert json.loads((out / "lora" / "behaviour.json").read_text())["flagged"]
    assert (out / "lora" / "report.html").is_file() and not list(store.glob("m/v*"))


def test_auto_keeps_the_base_when_the_fine_tune_ties(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from headstart.shapes.generate_sft import DEFAULTS

    monkeypatch.setitem(DEFAULTS, "lora", {"lr": 1e-9, "epochs": 1, "batch_size": 8})  # learns nothing
    data, out, store = _animal_pairs(tmp_path / "pairs.jsonl"), tmp_path / "auto", tmp_path / "s"
    args = ("--backbone", f"hf:{tiny_lm}", "--out", out, "--store", store, "--name", "m", "--json")
    result = json.loads(_cli_ok(capsys, "auto", data, "--task", "generate", *args).out)
    lora = next(r for r in result["comparison"]["rows"] if r["strategy"] == "lora")
    assert lora["vs_probe_val"]["verdict"] == "tie" and result["recommended"]["strategy"] == "head"
    assert result["registered"]["version"] == 1 and (store / "m" / "v1").is_dir()
