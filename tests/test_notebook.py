"""examples/quickstart.ipynb runs top to bottom (a short training run, small images) and shows
what it promises: figures, an exact STN chain on the ground truth, a sub-pixel landmark fit and
finite held-out metrics after training.

The kernel is a "python3" kernelspec written to a temporary JUPYTER_PATH that starts this very
interpreter, so the notebook sees the packages the tests see whatever kernels are installed.
"""

import math
import os
import re
import sys

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "examples", "quickstart.ipynb")
SMALL_RUN = {
    "QUICKSTART_TRAIN_STEPS": "10",
    "QUICKSTART_TRAIN_SIZE": "16",
    "QUICKSTART_EVAL_SIZE": "8",
    "QUICKSTART_IMAGE_SIZE": "112",
}


def _cells_by_tag(notebook):
    return {tag: cell for cell in notebook.cells for tag in cell.metadata.get("tags", [])}


def _text(cell) -> str:
    return "".join(
        output.get("text", "") for output in cell.outputs if output.output_type == "stream"
    )


def _has_image(cell) -> bool:
    return any("image/png" in output.get("data", {}) for output in cell.outputs)


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in:\n{text}"
    return float(match.group(1))


def test_committed_notebook_is_valid_and_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    prefix = tmp_path_factory.mktemp("jupyter")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "JUPYTER_PATH",
            os.pathsep.join(
                filter(None, [str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")])
            ),
        )
        install(prefix=str(prefix), kernel_name="python3")
        assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
        # The kernel imports the package from this checkout (also when the editable install
        # is stale) and draws with the inline backend.
        patch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
        )
        patch.delenv("MPLBACKEND", raising=False)
        patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("notebook_tmp")))  # its workdir
        for name, value in SMALL_RUN.items():
            patch.setenv(name, value)
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        client = NotebookClient(
            notebook,
            kernel_name="python3",
            timeout=600,
            resources={"metadata": {"path": os.path.join(REPO, "examples")}},
        )
        client.execute()  # raises CellExecutionError naming the cell when one fails
    return notebook


@pytest.mark.slow  # about 35 s on 2 cores: kernel start, rendering and compiling the STN
def test_notebook_runs_and_shows_its_results(executed):
    cells = _cells_by_tag(executed)
    assert {"install", "settings", "model", "render", "stn", "fit", "train", "predict"} <= set(
        cells
    )
    for cell in executed.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"]
    settings = _text(cells["settings"])
    assert "10 training steps" in settings and "112 px images" in settings
    for tag in ("model", "render", "stn", "fit", "train", "predict"):
        assert _has_image(cells[tag]), f"no figure in the {tag!r} cell"

    assert "3136 vertices (56 x 56 UV grid)" in _text(cells["model"])
    # The STN chain on the ground-truth theta reproduces the rendered landmarks.
    assert _number(r"max difference ([0-9.e+-]+) px", _text(cells["stn"])) < 1e-2
    fit = _text(cells["fit"])
    assert fit.count("landmark RMSE") == 6 + 1
    assert _number(r"fit landmark RMSE \(px\): mean [0-9.]+, max ([0-9.]+)", fit) < 0.5

    train = _text(cells["train"])
    assert _number(r"trained (\d+) steps", train) == 10
    for key in ("nme", "pose_mae_deg", "shape_error"):
        assert math.isfinite(_number(rf"held-out {key}: ([0-9.e+-]+|nan|inf)", train))
    nme = _number(r"NME on these 6 faces: ([0-9.e+-]+|nan|inf) %", _text(cells["predict"]))
    assert math.isfinite(nme) and nme > 0


def test_install_cell_needs_no_edit_and_finds_an_uploaded_package(tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    source = notebook.cells[2].source
    assert "OWNER" not in source and "placeholder" not in source.lower()
    definitions = source.split("\nif importlib.util.find_spec", 1)[0]
    names = {}
    exec(definitions, names)
    monkeypatch.chdir(tmp_path)
    wheel = tmp_path / "jax3dmmstn-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert names["find_package_source"]() == str(wheel)
    wheel.unlink()
    checkout = tmp_path / "jax3dmmstn-main"
    checkout.mkdir()
    (checkout / "pyproject.toml").write_text("")
    assert names["find_package_source"]() == str(checkout)
