"""Resume after a crash, and safe checkpoint loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import SAMPLES, tiny_recipe, write_recipe
from toolbox.checkpoint import load_checkpoint
from toolbox.cli import main
from toolbox.errors import ToolboxError


def _recipe(small_ct, tmp_path, steps=30):
    recipe = tiny_recipe(small_ct)
    # Dropout in the generator and the GAN make the run depend on every random state.
    recipe["train"].update(steps=steps, checkpoint_every=4, val_every=10, log_every=1)
    return write_recipe(tmp_path / "r.yaml", recipe)


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["scheme"]["modules"]


def test_sigkill_then_resume_equals_an_uninterrupted_run(small_ct, tmp_path):
    recipe = _recipe(small_ct, tmp_path)
    assert main(["run", str(recipe), "--out", str(tmp_path / "straight")]) == 0

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    process = subprocess.Popen([sys.executable, "-m", "toolbox", "run", str(recipe), "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it once a checkpoint exists, mid-run
        if last.exists():
            try:
                if 4 <= torch.load(last, weights_only=True)["step"] < 30:
                    break
            except Exception:  # noqa: BLE001 - being replaced right now: look again
                pass
        if process.poll() is not None:
            pytest.fail("the run finished before it could be killed")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_at = torch.load(last, weights_only=True)["step"]
    assert 4 <= stopped_at < 30

    assert main(["run", "--resume", str(killed)]) == 0
    straight, resumed = _weights(tmp_path / "straight"), _weights(killed)
    for net in straight:
        for key in straight[net]:
            assert torch.equal(straight[net][key], resumed[net][key]), f"{net}.{key}"
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == sorted(steps) and steps[-1] == 30 and len(steps) == len(set(steps))


def test_resume_can_extend_a_finished_run(small_ct, tmp_path):
    recipe = _recipe(small_ct, tmp_path, steps=4)
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(run)]) == 0
    with pytest.raises(ToolboxError, match="already trained 4 of 4 steps"):
        from toolbox import load_recipe, run_training

        run_training(load_recipe(run / "recipe.yaml"), resume=run)
    assert main(["run", "--resume", str(run), "train.steps=6"]) == 0
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 6


def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


class Payload:
    """An object whose unpickling runs a command: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_a_pickled_payload_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"recipe": {}, "generator": Payload(marker)}, evil)
    with pytest.raises(ToolboxError, match="weights_only=True"):
        load_checkpoint(evil)
    image = SAMPLES / "ct" / "test" / "chest_small.nii.gz"
    assert main(["denoise", str(evil), str(image), "-o", str(tmp_path / "y.nii.gz")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "y.nii.gz").exists()
    # The file really carries the payload (an unpickler that imports os.system and calls it),
    # shown by reading the pickle's opcodes rather than by running it.
    import pickletools
    import zipfile

    with zipfile.ZipFile(evil) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    opcodes = [(op.name, arg) for op, arg, _ in pickletools.genops(pickled)]
    assert ("GLOBAL", f"{os.name == 'nt' and 'nt' or 'posix'} system") in opcodes
    assert ("REDUCE", None) in opcodes


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ToolboxError, match="not a loadable toolbox checkpoint"):
        load_checkpoint(bad)


def test_a_checkpoint_of_the_first_format_still_denoises_and_resumes(small_ct, tmp_path):
    """Checkpoints written before format 2 carried the generator's weights and rank 0's random
    state twice ("generator", "rng"); they still load, denoise and resume to the same end."""
    recipe = _recipe(small_ct, tmp_path, steps=6)
    assert main(["run", str(recipe), "--out", str(tmp_path / "straight")]) == 0
    assert main(["run", str(recipe), "train.steps=4", "--out", str(tmp_path / "old")]) == 0
    for name in ("last", "best"):  # rewrite as format 1
        path = tmp_path / "old" / "checkpoints" / f"{name}.pt"
        payload = torch.load(path, weights_only=True)
        module = payload.pop("generator_module")
        payload.update(format=1, generator=payload["scheme"]["modules"][module], rng=payload["rng_ranks"][0])
        torch.save(payload, path)
    assert main(["denoise", str(tmp_path / "old"), str(small_ct / "val" / "spine.nii.gz"),
                 "-o", str(tmp_path / "spine.nii.gz")]) == 0
    assert main(["run", "--resume", str(tmp_path / "old"), "train.steps=6"]) == 0
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "old")
    for net in straight:
        for key in straight[net]:
            torch.testing.assert_close(resumed[net][key], straight[net][key], rtol=0, atol=0)


def test_files_written_atomically_get_the_usual_permissions(tmp_path):
    """mkstemp's private 0600 would make shared run folders unreadable to colleagues."""
    import stat

    from toolbox.checkpoint import atomic_write

    mask = os.umask(0o022)
    try:
        target = tmp_path / "report.json"
        atomic_write(target, lambda tmp: tmp.write_text("{}"))
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    finally:
        os.umask(mask)
