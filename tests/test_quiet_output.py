"""What a stage prints into a pipe (`dvc repro > log`, CI): no bar for no work, `epoch k/N`
per epoch, and a small data set's undefined valid ROC-AUC said once, not twice an epoch."""
import subprocess
import sys
from pathlib import Path

from coughlab.training import epoch_line

ROOT = Path(__file__).resolve().parents[1]


def piped(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}",
                               "PATH": "/usr/bin:/bin"})


def test_a_bar_with_nothing_to_do_prints_nothing(tmp_path):
    """combine printed `confirm: 0pair [00:00, ?pair/s]` when no clip pair needed checking."""
    result = piped("from coughlab.progress import progress_bar\n"
                   "for _ in progress_bar([], desc='confirm', unit='pair'): pass\n"
                   "with progress_bar(total=0, desc='zip', unit='B') as bar: bar.update(0)\n"
                   "for _ in progress_bar(range(2), desc='work', unit='clip'): pass\n", tmp_path)
    assert "confirm" not in result.stderr and "zip" not in result.stderr
    assert "work: 100%" in result.stderr


def test_an_epoch_line_says_which_of_how_many():
    assert epoch_line(["epoch", "train_loss", "time"], [3, 0.512345, "00:01"], 20) == \
        "epoch 4/20  train_loss 0.5123  time 00:01"


def test_training_into_a_pipe_counts_epochs_and_says_once_that_valid_has_one_label(tmp_path):
    result = piped(
        "from pathlib import Path\n"
        "from coughlab.determinism import pin_cpu_kernels; pin_cpu_kernels()\n"
        "from helpers import conf, make_features\n"
        "from coughlab.training import train_model\n"
        "features = make_features(Path('features'), n_per_split=(40, 1, 2))\n"
        "train_model(conf('train.epochs=3', 'model.width=8'), features, Path('model'),\n"
        "            Path('checkpoints'))\n", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert epochs == ["1/3", "2/3", "3/3"], result.stdout
    assert result.stdout.count("the valid ROC-AUC is undefined") == 1
    assert "Only one class is present" not in result.stderr, result.stderr
