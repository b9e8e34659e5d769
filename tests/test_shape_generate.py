"""--task generate on a tiny random Llama with a chat template: response-only labels, the behaviour check
flagging a fine-tune that dropped its refusals (and the store refusing to alias it), and fit -> evaluate
-> predict -> report end to end."""

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


def test_behaviour_check_flags_a_dropped_refusal(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headstart.shapes.generate_behaviour import load_prompt_set

    harmful = [x["prompt"] for x in load_prompt_set()["harmful"]]
    base = _refusing_base(tiny_lm, harmful)
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


def test_fit_evaluate_predict_report_end_to_end(
    tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    words = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "mouse", "lion", "tiger"]
    rows = [{"prompt": f"the {w} is", "response": f"a {w} is an animal"} for w in words * 3]
    data = _write_pairs(tmp_path / "pairs.jsonl", rows)
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

    assert_refused(run_cli(capsys, "export", run, "--onnx"), names="generate runs")
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
