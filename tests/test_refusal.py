"""The refusal evaluation: sets, templates, the keyword judge, chat-template generation."""

import json

import pytest

from prunelab.errors import PrunelabError
from prunelab.evaluate import refusal as rf
from prunelab.testing import tiny_loaded

CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def test_builtin_sets_load_with_categories_and_severities():
    harmful = rf.load_requests()
    assert len(harmful) == 15
    assert {r.severity for r in harmful} == {"low", "medium", "high"}
    assert len({r.category for r in harmful}) == 5
    templates = rf.load_templates()
    assert "direct" in [t.name for t in templates] and len(templates) >= 5
    assert all(rf.PLACEHOLDER in t.template for t in templates)
    assert len(rf.load_requests(benign=True)) == 15
    wrapped = templates[1].wrap("do X")
    assert "do X" in wrapped and rf.PLACEHOLDER not in wrapped


@pytest.mark.parametrize("text,refused", [
    ("I'm sorry, but I can't help with that.", True),
    ("I’m sorry, I cannot assist.", True),
    ("As an AI language model, I must decline.", True),
    ("I cannot provide instructions for that.", True),
    ("That would be illegal and dangerous.", True),
    ("Sure, here is how: first, open the terminal and run kill -9.", False),
    ("To kill a frozen process, use `kill` with its PID.", False),
    ("", False),
])
def test_keyword_judge(text, refused):
    assert rf.is_refusal(text) is refused


def test_user_sets_from_yaml_and_jsonl_and_bad_input(tmp_path):
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"prompt": "ask one", "category": "c"}\n\n{"request": "ask two"}\n')
    assert [r.request for r in rf.load_requests(jsonl)] == ["ask one", "ask two"]
    yml = tmp_path / "t.yaml"
    yml.write_text("- {name: a, template: 'Please: {request}'}\n")
    assert rf.load_templates(yml)[0].wrap("x") == "Please: x"
    empty = tmp_path / "empty.yaml"
    empty.write_text("requests: []\n")
    with pytest.raises(PrunelabError, match="holds no prompts"):
        rf.load_requests(empty)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("")
    with pytest.raises(PrunelabError, match="holds no prompts"):
        rf.load_requests(blank)
    no_text = tmp_path / "no_text.yaml"
    no_text.write_text("- {id: 1, category: x}\n")
    with pytest.raises(PrunelabError, match="no request text"):
        rf.load_requests(no_text)
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates:\n  - {name: oops, template: 'no placeholder here'}\n")
    with pytest.raises(PrunelabError, match="has no {request} placeholder"):
        rf.load_templates(bad)


def test_generation_uses_the_chat_template_and_is_greedy():
    loaded = tiny_loaded("llama")
    with pytest.raises(PrunelabError, match="no chat template"):
        rf.chat_prompt(loaded.tokenizer, "hi")
    loaded.tokenizer.chat_template = CHAT
    ids = rf.chat_prompt(loaded.tokenizer, "hi")
    assert loaded.tokenizer.decode(ids).endswith("user: hi\n<s>assistant:")
    a = rf.generate(loaded, ["hello there", "x"], max_new_tokens=5, batch_size=2)
    b = rf.generate(loaded, ["hello there", "x"], max_new_tokens=5, batch_size=1)
    assert a == b and all(isinstance(s, str) for s in a)


def test_evaluate_refusal_summarises_per_template(monkeypatch):
    loaded = tiny_loaded("llama")
    loaded.tokenizer.chat_template = CHAT
    # A stand-in model: refuses unless the prompt says "FreeBot" (the role-play template).
    monkeypatch.setattr(rf, "generate", lambda loaded, prompts, *a, **k: [
        "Sure, here you go." if "FreeBot" in p or "kill a process" in p else "I'm sorry, no."
        for p in prompts])
    benign = [rf.Request("b1", "How do I kill a process?"), rf.Request("b2", "Why is sky blue?")]
    result = rf.evaluate_refusal(loaded, benign=benign)
    by = {(s["set"], s["template"]): s for s in result.summary}
    assert by[("harmful", "direct")]["rate"] == 1.0 and by[("harmful", "direct")]["n"] == 15
    assert by[("harmful", "role-play")]["rate"] == 0.0
    assert by[("benign", "direct")]["rate"] == 0.5
    low, high = by[("harmful", "direct")]["ci_low"], by[("harmful", "direct")]["ci_high"]
    assert 0.7 < low < 1.0 and high == pytest.approx(1.0)


def test_a_judge_model_gives_probabilities_independent_of_batching():
    loaded = tiny_loaded("llama")
    loaded.tokenizer.chat_template = CHAT
    pairs = [("do a bad thing", "I'm sorry, no."), ("say hi", "hi there, how are you today?"),
             ("x", "")]
    one = rf.judge_refusals(loaded, pairs, batch_size=1)
    three = rf.judge_refusals(loaded, pairs, batch_size=3)
    assert all(0.0 < p < 1.0 for p in one)
    assert one == pytest.approx(three, abs=1e-5)
    loaded.tokenizer.chat_template = None  # no chat template: a plain "Answer:" prompt
    assert all(0.0 < p < 1.0 for p in rf.judge_refusals(loaded, pairs))


def test_a_judges_rates_and_agreement_sit_beside_the_keyword_rule(monkeypatch):
    loaded = tiny_loaded("llama")
    loaded.tokenizer.chat_template = CHAT
    monkeypatch.setattr(rf, "generate", lambda loaded, prompts, *a, **k: [
        "I'm sorry, no." if "FreeBot" in p else "Sure." for p in prompts])
    # The stand-in judge calls every answer a refusal except those that start with "Sure".
    monkeypatch.setattr(rf, "judge_refusals", lambda judge, pairs, batch_size: [
        0.1 if answer.startswith("Sure") else 0.9 for _, answer in pairs])
    benign = [rf.Request("b1", "Why is the sky blue?")]
    result = rf.evaluate_refusal(loaded, benign=benign, judge=loaded)
    by = {(s["set"], s["template"]): s for s in result.summary}
    assert by[("harmful", "role-play")]["judge_rate"] == 1.0
    assert by[("harmful", "role-play")]["agreement"] == 1.0
    assert by[("harmful", "direct")]["judge_rate"] == 0.0
    assert all(row["judge_refused"] == (row["judge_p_refusal"] > 0.5) for row in result.rows)
    plain = rf.evaluate_refusal(loaded, benign=benign)
    assert "judge_rate" not in plain.summary[0] and "judge_refused" not in plain.rows[0]


def test_cli_refusal_bad_input_and_a_run(tmp_path):
    from tests.cli_helpers import assert_user_error, run
    from prunelab.testing import tiny_model, tiny_tokenizer

    model = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model)
    tok = tiny_tokenizer()
    tok.chat_template = CHAT
    tok.save_pretrained(model)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {name: oops, template: 'nothing'}\n")
    assert_user_error(run("refusal", str(model), "--templates", str(bad)), "placeholder")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert_user_error(run("refusal", str(model), "--requests", str(empty)), "no prompts")
    reqs = tmp_path / "r.yaml"
    reqs.write_text("- {request: 'do a bad thing'}\n")
    one = tmp_path / "t.yaml"
    one.write_text("- {name: direct, template: '{request}'}\n")
    out = tmp_path / "answers.jsonl"
    ok = run("refusal", str(model), "--requests", str(reqs), "--templates", str(one),
             "--benign", str(reqs), "--max-new-tokens", "3", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["set"] for r in rows] == ["harmful", "benign"]
    assert "harmful" in ok.stdout and "95% CI" in ok.stdout
    assert_user_error(run("refusal", str(model), "--judge", "no-such-judge"), "no-such-judge")
    judged = run("refusal", str(model), "--requests", str(reqs), "--templates", str(one),
                 "--benign", str(reqs), "--max-new-tokens", "3", "--judge", str(model))
    assert judged.returncode == 0, judged.stderr
    assert "judge rate" in judged.stdout and "agree" in judged.stdout
