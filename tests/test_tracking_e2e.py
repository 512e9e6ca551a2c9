"""A real 2-process job with W&B offline, read back from its .wandb transaction log."""
import pytest

from tests.helpers import check_ok, metrics, summary, tiny, train_cli
from tests.wandb_records import read_wandb_run

pytestmark = pytest.mark.slow  # every test here launches processes or trains

PNG = b"\x89PNG\r\n\x1a\n"


def test_two_rank_offline_run_logs_what_metrics_jsonl_has_and_resumes_the_same_run(two_rank_resumed_run):
    first, run = two_rank_resumed_run.after_2_epochs, two_rank_resumed_run.run  # 2 epochs (a copy), then resumed to 4
    record = read_wandb_run(first)
    assert len(record["run_ids"]) == 1
    assert record["config"]["train"]["batch_size"] == 500
    logged = [row["val/rmse"] for row in record["history"] if "val/rmse" in row]
    assert logged == pytest.approx([row["val_rmse"] for row in metrics(first)], rel=1e-9)
    assert record["summary"]["best_val_rmse"] == pytest.approx(summary(first)["best_val_rmse"])
    assert record["summary"]["val/rmse"]["min"] == pytest.approx(min(logged))
    for name in ("learning_curves", "lr_schedule", "embedding_pca"):
        assert any(f"plots/{name}" in row for row in record["history"]), name
        assert (first / "plots" / f"{name}.png").read_bytes().startswith(PNG)
    first_steps = [row["_step"] for row in record["history"]]

    again = read_wandb_run(run)
    assert set(again["run_ids"]) == set(record["run_ids"]), "a resumed job continues the same W&B run"
    later = [row["_step"] for row in again["history"] if row["_step"] > max(first_steps)]
    assert later and later == sorted(later)
    assert [row["val/rmse"] for row in again["history"] if "val/rmse" in row][-2:] == pytest.approx(
        [row["val_rmse"] for row in metrics(run)][-2:])


def test_tracking_off_writes_no_wandb_files(tmp_path):
    check_ok(train_cli(tiny(tmp_path, "run", "tracking.mode=disabled", "train.epochs=1")))
    run = tmp_path / "run"
    assert not (run / "wandb").exists() and not (run / "wandb_run_id").exists()
    assert (run / "plots" / "learning_curves.png").exists()


def test_refit_phase_is_a_second_run_in_the_same_group(tmp_path):
    check_ok(train_cli(tiny(tmp_path, "exp1", "tracking.mode=offline", "tracking.name=exp", "train.refit=true")))
    first, second = read_wandb_run(tmp_path / "exp1"), read_wandb_run(tmp_path / "exp1" / "refit")
    assert len(first["run_ids"]) == len(second["run_ids"]) == 1 and first["run_ids"] != second["run_ids"]
    assert first["groups"] == second["groups"] == ["exp1"]  # tracking.group unset: the run directory's name
    assert (first["names"], second["names"]) == (["exp"], ["exp-refit"])
    assert second["config"]["data"]["val_fraction"] == 0
    assert any("val/rmse" in row for row in first["history"])
    assert not any("val/rmse" in row for row in second["history"])  # no validation part to report
    assert second["summary"]["test_rmse"] == pytest.approx(summary(tmp_path / "exp1" / "refit")["test_rmse"])
