"""The ablation table is built from DVC's records of finished experiments."""
from __future__ import annotations

from pipeline.studies import ablations


def _metrics(fid: float, steps: int | None = None) -> dict:
    scores = {"inception": {"fid": fid}, "classifier": {"fid": 2 * fid}, "conditional_accuracy": 0.9}
    return {"generated": {**scores, "decoding": {"cfg_scale": 2.0, "top_p": 0.6}},
            "tuned": {**scores, "decoding": {"cfg_scale": 3.0, "top_p": 0.8, "diffusion_steps": steps or 50}},
            "real_floor": scores, "tokenizer_floor": scores,
            # `dvc exp show --json` leaves out null metrics: diffusion has no bits per image
            "likelihood": {} if steps else {"test_bits_per_image": 221.7},
            "compute": {"train_flops": 4e13, "train_minutes": 10.0, "sample_images_per_s": 5.0},
            "extractors": {"inception": "some Inception"}}


def test_rows_every_column_and_the_figure(tmp_path, monkeypatch):
    found = {"abl-default": {"metrics": _metrics(200.0)}, "abl-diffusion": {"metrics": _metrics(150.0, steps=25)}}
    monkeypatch.setattr(ablations, "experiments", lambda: found)
    ablations.table(tmp_path / "t.md", tmp_path / "t.png")
    text = (tmp_path / "t.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| row |") and len(rows) == 3
    assert "| default (zero-block, haar, f = -1) | 221.7 | 200.0 | 200.0 | 200.0 | 400.0 |" in rows[1]
    assert "guidance 3, top-p 0.8" in rows[1] and "guidance 3, 25 steps" in rows[2] and "| n/a |" in rows[2]
    assert "Not run yet: sequence-positions" in text
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_every_row_pins_the_table_language_and_the_budget():
    assert ablations.overrides("default", 1e13) == ablations.PINNED + ["train.flops=1e+13"]
    assert "tokenizer.final_exponent=-2" in ablations.overrides("finer-planes", 1e13)
    assert "tokenizer.final_exponent=-1" not in ablations.overrides("finer-planes", 1e13)
    assert ablations.overrides("diffusion", 1e13) == ["family=diffusion", "train.flops=1e+13"]


def test_bpe_tradeoff_table_and_figure(tmp_path, monkeypatch):
    from pipeline.studies import bpe_study

    def experiment(vocab: int, length: float, fid: float, seed: int = 0) -> dict:
        metrics = _metrics(fid)
        metrics["likelihood"]["test_bits_per_token"] = 221.7 / length
        return {"metrics": metrics, "params": {"train": {"seed": seed}}, "files": {
            "reports/metrics.json": metrics,
            "reports/tokenize.json": {"vocab_size": vocab, "train": {"length_mean": length, "length_max": 2 * length}},
            "reports/train/metrics.json": {"train_tokens_per_s": 1000.0, "steps": 500}}}

    found = {"bpe-7": experiment(8, 360.0, 200.0), "bpe-256": experiment(256, 76.0, 180.0),
             "bpe-7-s1": experiment(8, 360.0, 210.0, seed=1), "bpe-7x": experiment(8, 1.0, 1.0)}
    monkeypatch.setattr(bpe_study, "experiments", lambda: found)
    bpe_study.table(tmp_path / "b.md", tmp_path / "b.png")
    rows = [line for line in (tmp_path / "b.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| vocabulary | seed | mean length |") and len(rows) == 4  # not bpe-7x
    # vocabulary 7 (8 ids with ZeroTree), its length, training images/s = tokens/s / length
    assert rows[1].startswith("| 7 | 0 | 360.0 | 720.0 | 221.7 | 0.616 | 1,000 | 2.8 | 5.0 | 200.0 |")
    assert rows[2].startswith("| 7 | 1 | 360.0 |") and "| 210.0 |" in rows[2]
    assert rows[3].startswith("| 256 | 0 | 76.0 |") and "| 13.2 |" in rows[3]
    assert "Not run yet: bpe-64, bpe-1024, bpe-4096" in (tmp_path / "b.md").read_text()
    assert (tmp_path / "b.png").stat().st_size > 10_000
    assert bpe_study.overrides(0, 1e13)[-3:] == ["tokenizer.bpe_vocab_size=0", "train.flops=1e+13", "train.seed=0"]
    assert bpe_study.row_name(0, 2) == "bpe-7-s2"


def test_every_compute_curve_point_composes_to_valid_params(tmp_path):
    """Each system's overrides, composed as `dvc exp run -S` composes them, give params every stage
    accepts, at the point's budget, seed and precision, in the language the system is named for."""
    import yaml
    from dvc.utils.hydra import compose_and_dump
    from conftest import REPO

    from pipeline import params
    from pipeline.studies import compute_curves

    for system in compute_curves.SYSTEMS:
        out = tmp_path / f"{system}.yaml"
        compose_and_dump(out, str(REPO / "conf"), None, "config", str(tmp_path),
                         compute_curves.overrides(system, 4e13, seed=1))
        p = params.load(out, params.ALL_KEYS)
        assert (p.train.flops, p.train.seed, p.train.precision) == (4e13, 1, "bf16"), system
        language = (p.tokenizer.method, p.tokenizer.final_exponent, p.tokenizer.bpe_vocab_size, p.model.context)
        assert language == (LANGUAGES[system] if system.startswith("zerotree") else language), system
        assert yaml.safe_load(out.read_text())["model"]["family"] == (
            "diffusion" if system == "diffusion" else "transformer"), system
    assert compute_curves.overrides("pixels", 1e13)[:2] == ["tokenizer.method=pixels", "tokenizer.pixel_levels=4"]
    fp32_point = tmp_path / "pixels-1.6e14.yaml"
    compose_and_dump(fp32_point, str(REPO / "conf"), None, "config", str(tmp_path),
                     compute_curves.overrides("pixels", 1.6e14))
    assert params.load(fp32_point, params.ALL_KEYS).train.precision == "fp32"


# The wavelet systems' (method, f, BPE ids, context): what their names say.
LANGUAGES = {"zerotree": ("zerotree", -1, 0, "none"), "zerotree-context": ("zerotree", -1, 0, "scan"),
             "zerotree-bpe256": ("zerotree", -1, 256, "none"),
             "zerotree-f2-bpe256": ("zerotree", -2, 256, "none"), "zerotree-f3-bpe256": ("zerotree", -3, 256, "none")}


def test_compute_curves_keep_recorded_points_and_prefer_this_clones_experiments(tmp_path, monkeypatch):
    """Experiment refs do not survive a new clone: the table regenerates from its record, and a
    point this clone ran replaces the recorded row of the same point."""
    import json

    from pipeline.studies import compute_curves

    def experiment(fid: float, budget: float, seed: int) -> dict:
        metrics = _metrics(fid)
        return {"metrics": metrics, "params": {"train": {"flops": budget, "seed": seed, "precision": "bf16"}},
                "baseline": "abc1234", "rev": f"rev-{budget:g}",
                "files": {"reports/metrics.json": metrics, "reports/train/metrics.json": {"steps": 300}}}

    record = tmp_path / "c.json"
    recorded = [compute_curves.row("pixels", experiment(120.0, 4e13, 0)),
                compute_curves.row("zerotree", experiment(300.0, 4e13, 0))]
    record.write_text(json.dumps(recorded))
    monkeypatch.setattr(compute_curves, "experiments", lambda: {"cc-zerotree-4e13": experiment(250.0, 4e13, 0),
                                                                "cc-zerotree-1e13-s1": experiment(400.0, 1e13, 1)})
    copied = []
    monkeypatch.setattr(compute_curves, "copy_samples_figure",
                        lambda rev, path: (copied.append(rev), path.write_bytes(b"png")))
    compute_curves.table(tmp_path / "c.md", tmp_path / "c.png", record, samples=tmp_path / "samples")
    assert copied == ["rev-1e+13", "rev-4e+13"]
    assert ": cc-zerotree-1e13-s1, cc-zerotree-4e13." in (tmp_path / "c.md").read_text()
    rows = [line for line in (tmp_path / "c.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| pixels (4 levels)"] + ["| wavelet: zero-tree, haar, f = -1"] * 2
    assert "| 120.0 |" in rows[0] and "| 400.0 |" in rows[1] and "| 250.0 |" in rows[2] and "300.0" not in rows[2]
    kept = json.loads(record.read_text())
    assert sorted((r["system"], r["budget"], r["seed"], r["generated_inception"]) for r in kept) == [
        ("pixels", 4e13, 0, 120.0), ("zerotree", 1e13, 1, 400.0), ("zerotree", 4e13, 0, 250.0)]
    monkeypatch.setattr(compute_curves, "experiments", lambda: {})  # a new clone: the record alone
    compute_curves.table(tmp_path / "d.md", tmp_path / "d.png", record, samples=tmp_path / "samples")
    assert (tmp_path / "d.md").read_text().split("\n", 1)[1] == (tmp_path / "c.md").read_text().split("\n", 1)[1]


def test_colour_rows_compose_to_their_languages_and_regenerate_from_the_record(tmp_path, monkeypatch):
    """Each CIFAR row's overrides give params every stage accepts, on cifar10_jpeg at the shared
    settings, in the language the row is named for; the table keeps each finished row in its
    record (a new clone regenerates it) and copies each experiment's samples figure."""

    from dvc.utils.hydra import compose_and_dump
    from conftest import REPO

    from pipeline import params
    from pipeline.studies import colour_rows

    languages = {"wavelet": ("transformer", "zerotree", -4, -3, 256), "pixels": ("transformer", "pixels", -4, -3, 0),
                 "diffusion": ("diffusion", "pixels", -4, -3, 0)}
    for system in colour_rows.SYSTEMS:
        out = tmp_path / f"{system}.yaml"
        compose_and_dump(out, str(REPO / "conf"), None, "config", str(tmp_path), colour_rows.overrides(system, 4e13))
        p = params.load(out, params.ALL_KEYS)
        assert (p.dataset, p.image.channels, p.train.flops, p.train.batch_size, p.train.precision) == (
            "cifar10_jpeg", 3, 4e13, 8, "fp32"), system
        assert (p.model.family, p.tokenizer.method, p.tokenizer.final_exponent, p.tokenizer.chroma_final_exponent,
                p.tokenizer.bpe_vocab_size) == languages[system], system
        assert (p.sample.per_class * 10, p.eval.num_samples, p.tune.per_class) == (250, 250, 3), system
    assert "tokenizer.pixel_levels=8" in colour_rows.overrides("pixels", 4e13)

    def experiment(fid: float, system: str) -> dict:
        metrics = _metrics(fid, steps=25 if system == "diffusion" else None)
        return {"metrics": metrics, "params": {"train": {"flops": 4e13, "seed": 0, "precision": "fp32"}},
                "baseline": "abc1234",
                "rev": f"rev-{system}", "files": {"reports/metrics.json": metrics,
                                                  "reports/train/metrics.json": {"steps": 300},
                                                  "reports/tokenize.json": {"test": {"length_mean": 442.0}}}}

    copied = []
    monkeypatch.setattr(colour_rows, "copy_samples_figure", lambda rev, path: copied.append((rev, path.name)))
    monkeypatch.setattr(colour_rows, "experiments", lambda: {"cifar-diffusion-4e13": experiment(150.0, "diffusion"),
                                                             "cifar-wavelet-4e13": experiment(90.0, "wavelet"),
                                                             "cifar-wavelets-4e13": experiment(1.0, "wavelet")})
    record = tmp_path / "r.json"
    colour_rows.table(tmp_path / "r.md", tmp_path / "r.png", record)
    rows = [line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| wavelet: zero-tree, haar, f = -4 / chroma -3, BPE 256 | 442.0 | 4e+13 | 300 |")
    assert "| 90.0 | 90.0 | 180.0 | 180.0 | 0.900 | 0.900 | guidance 3, top-p 0.8 |" in rows[0]
    assert rows[1].startswith("| diffusion (DDPM, DDIM sampling) |") and "guidance 3, 25 steps" in rows[1]
    assert len(rows) == 2 and "Not run (no finished experiment): cifar-pixels-4e13" in (tmp_path / "r.md").read_text()
    assert sorted(copied) == [("rev-diffusion", "samples_diffusion.png"), ("rev-wavelet", "samples_wavelet.png")]
    assert (tmp_path / "r.png").stat().st_size > 10_000
    monkeypatch.setattr(colour_rows, "experiments", lambda: {})  # a new clone: the record alone
    colour_rows.table(tmp_path / "s.md", tmp_path / "s.png", record)
    assert (tmp_path / "s.md").read_text().split("\n", 1)[1] == (tmp_path / "r.md").read_text().split("\n", 1)[1]
