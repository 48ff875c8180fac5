"""The tour's training example runs as printed and its reloaded model predicts what the trained one did."""

from __future__ import annotations

from pathlib import Path

# the example moved from the README to the tour of the docs
README = Path(__file__).resolve().parents[2] / "docs" / "guides" / "tour.md"


def test_readme_training_example_runs(tmp_path, monkeypatch, capsys) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Training a network") :]
    code = section[
        section.index("```python") + len("```python") : section.index(
            "```\n", section.index("```python") + 9
        )
    ]
    monkeypatch.chdir(tmp_path)  # the example writes mlp.safetensors into the working directory
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "mlp.safetensors").is_file()
    model, restored, x_test = namespace["model"], namespace["restored"], namespace["x_test"]
    nl = namespace["nl"]
    assert (nl.predict(restored, x_test) == nl.predict(model, x_test)).all()
    assert (
        nl.evaluate(model, x_test, namespace["test"].y)["accuracy"] > 0.93
    )  # what the README claims
    out = capsys.readouterr().out
    assert "Epoch 5/5" in out and "'accuracy': 0.95" in out
