"""The inference notebook runs top to bottom on a tiny export (nbclient)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "vila_tf_inference.ipynb")


@pytest.mark.long
def test_notebook_runs_clean(exported, monkeypatch, tmp_path):
    monkeypatch.setenv("VILA_MODEL", exported["vila_r_tiny"])
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the contact sheet was displayed
    text = "".join(o.get("text", "") for o in outputs)
    assert "astronaut" in text and "coffee" in text
    assert "composi" in text and "sharp" in text  # the zero-shot attributes and a pair of our own
