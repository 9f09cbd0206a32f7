"""The learning-dynamics toolkit: Prop. 1's first-order error is O(η), the eNTK equals an explicit Jacobian
product, invariance of z(k·1) holds exactly where theory says (and is flagged where not), the unified view
drives the library's components, and the probe curves / CLI read run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dytrim.cli import main
from dytrim.config import dump_yaml, load_config
from dytrim.debias.reweight import class_weights
from dytrim.dynamics.baseline_checks import invariance_table, read_prior_curve
from dytrim.dynamics.decompose import decompose_step, error_vs_lr, output_sensitivity
from dytrim.dynamics.fixmatch_split import fixmatch_loss, split_fixmatch_step
from dytrim.dynamics.mlp import SmallMLP
from dytrim.dynamics.ntk import empirical_ntk, logit_jacobian
from dytrim.engine.checkpoint import save_checkpoint
from dytrim.engine.probe import kl
from dytrim.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mlp(seed: int = 0, d: int = 12, c: int = 4, hidden: int = 8, norm: str = "none") -> SmallMLP:
    torch.manual_seed(seed)
    return SmallMLP(d, c, hidden, norm).double()


def _fixmatch_problem(seed: int = 1, d: int = 12, c: int = 4):
    g = torch.Generator().manual_seed(seed)
    x_o = torch.randn(6, d, generator=g, dtype=torch.float64)
    x_lb = torch.randn(5, d, generator=g, dtype=torch.float64)
    y_lb = torch.randint(c, (5,), generator=g)
    x_s = torch.randn(7, d, generator=g, dtype=torch.float64)
    targets = F.one_hot(torch.randint(c, (7,), generator=g), c).double()
    mask = torch.tensor([1, 1, 0, 1, 1, 0, 1], dtype=torch.float64)
    return x_o, {"supervised": x_lb, "consistency": x_s}, fixmatch_loss(y_lb, targets, mask, 1.0)


def test_first_order_error_shrinks_linearly_with_lr() -> None:
    model = _mlp()
    x_o, inputs, loss = _fixmatch_problem()
    big, small = error_vs_lr(model, x_o, inputs, loss, [1e-2, 1e-3])
    assert small["rel_error"] < 1e-2
    ratio = big["rel_error"] / small["rel_error"]
    assert 7.0 < ratio < 13.0, ratio  # O(η²) remainder over an O(η) change: relative error ∝ η


def test_entk_equals_explicit_jacobian_product_and_finite_differences() -> None:
    model = _mlp(hidden=5, norm="layer")
    x1 = torch.randn(3, 12, dtype=torch.float64)
    x2 = torch.randn(4, 12, dtype=torch.float64)
    params = [p for p in model.parameters()]

    def explicit_jacobian(x: torch.Tensor) -> torch.Tensor:  # [N, C, P] row by row with autograd
        rows = []
        for xi in x:
            z = model(xi[None])[0]
            rows.append(torch.stack([
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(z[c], params, retain_graph=True)])
                for c in range(len(z))
            ]))
        return torch.stack(rows)

    j1, j2 = explicit_jacobian(x1), explicit_jacobian(x2)
    assert torch.allclose(logit_jacobian(model, x1), j1, atol=1e-12)
    k_explicit = torch.einsum("acp,bdp->abcd", j1, j2)
    assert torch.allclose(empirical_ntk(model, x1, x2), k_explicit, atol=1e-10)
    per_input = 4 * sum(p.numel() for p in params) * 8
    chunked = empirical_ntk(model, x1, x2, max_bytes=2 * per_input)  # forces one input per chunk
    assert torch.allclose(chunked, k_explicit, atol=1e-10)
    # finite differences along a random parameter direction: z(θ + εv) − z(θ − εv) ≈ 2ε J v
    v = torch.randn(j1.shape[-1], dtype=torch.float64)
    eps = 1e-6
    flat = torch.nn.utils.parameters_to_vector(params).detach()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat + eps * v, params)
        z_plus = model(x1)
        torch.nn.utils.vector_to_parameters(flat - eps * v, params)
        z_minus = model(x1)
        torch.nn.utils.vector_to_parameters(flat, params)
    assert torch.allclose((z_plus - z_minus) / (2 * eps), j1 @ v, atol=1e-7)


def test_kernel_and_gradient_routes_agree_and_terms_add_up() -> None:
    model = _mlp()
    x_o, inputs, loss = _fixmatch_problem()
    a = decompose_step(model, x_o, inputs, loss, 0.01, route="ntk")
    b = decompose_step(model, x_o, inputs, loss, 0.01, route="grad")
    assert torch.allclose(a.predicted, b.predicted, atol=1e-14)
    assert torch.allclose(a.term("supervised").delta + a.term("consistency").delta, a.predicted)
    assert a.term("consistency").pair[:, 2].abs().max() == 0  # masked sample: no share
    t = output_sensitivity(torch.randn(3, 4, dtype=torch.float64))
    assert torch.allclose(t @ torch.ones(4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64))
    assert a.rel_error() < 0.05


def test_fixmatch_split_pseudo_labels_and_pairs() -> None:
    from dytrim.config import SSLConfig

    model = _mlp(c=3)
    g = torch.Generator().manual_seed(3)
    x_u = torch.randn(8, 12, generator=g, dtype=torch.float64)
    y_u = torch.randint(3, (8,), generator=g)
    x_lb, y_lb = torch.randn(4, 12, generator=g, dtype=torch.float64), torch.randint(3, (4,), generator=g)
    s = split_fixmatch_step(model, x_u, y_u, x_lb, y_lb, x_u, x_u + 0.01, y_u, 0.01,
                            SSLConfig(name="fixmatch", hard_label=True, p_cutoff=0.0), real=True)
    with torch.no_grad():
        assert torch.equal(s.pseudo, model(x_u).argmax(-1))  # the library's FixMatch rule on the weak view
    assert torch.allclose(s.pair_true_class().sum(1), s.true_class("consistency"))
    pairs = s.same_class_pairs()
    assert len(pairs["correct"]) + len(pairs["wrong"]) == int((y_u[:, None] == y_u[None, :]).sum())
    # a sample's own share on itself pushes toward its pseudo-label: positive exactly when that label is right
    own = s.pair_true_class().diagonal()
    assert bool((own[s.correct] > 0).all()) and bool((own[~s.correct] < 0).all())
    assert s.dec.rel_error() < 0.05


def test_invariance_exact_where_theory_says_and_flagged_elsewhere() -> None:
    images = torch.randn(48, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    rows = {(r.arch, r.mode): r for r in invariance_table(images, 5, archs=("mlp", "mlp_bn", "cnn_small", "wrn_28_2"))}
    assert rows["mlp_bn", "train"].verdict == "exact"  # Prop. 3: train-mode BN before the head
    assert rows["mlp_bn", "train"].max_dz_all < 1e-9  # even for k = 0 and k < 0
    for key in (("mlp_bn", "eval"), ("cnn_small", "eval"), ("wrn_28_2", "eval"), ("mlp", "train")):
        assert rows[key].verdict == "fails", key  # running statistics / no norm: z(kI) moves with k
    assert rows["cnn_small", "train"].verdict in ("exact", "approximate")
    assert rows["wrn_28_2", "train"].max_dz_pos < rows["wrn_28_2", "eval"].max_dz_pos
    assert "not invariant" in rows["wrn_28_2", "eval"].theory


def _fake_run(tmp_path: Path, with_probe: bool) -> Path:
    run = tmp_path / "fake-run" / "seed0"
    run.mkdir(parents=True)
    cfg = load_config("mnist-lt-fixmatch", ["train.steps=4"])
    (run / "config.yaml").write_text(dump_yaml(cfg))
    counts = [6, 3, 1] + [1] * 7
    (run / "run.json").write_text(json.dumps({"counts": {"labeled": counts}}))
    rows = []
    for step, p in ((2, [0.1] * 10), (4, [n / sum(counts) for n in counts])):  # uniform, then the prior itself
        row: dict[str, object] = {"step": step, "bacc": 0.1}
        if with_probe:
            row |= {"prior_baseline": p, "prior_baseline_trainmode": p}
        rows.append(json.dumps(row))
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    if not with_probe:
        torch.manual_seed(0)
        model = create_model("cnn_small", 10, in_channels=1)
        save_checkpoint(run, 4, {"step": 4, "ema": model.state_dict()}, keep=1)
    return run


def test_prior_curve_from_metrics_and_from_checkpoints(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, with_probe=True)
    curve = read_prior_curve(run)
    assert curve.source == "metrics.jsonl" and curve.name == "fake-run" and curve.steps == [2, 4]
    prior = torch.tensor([6, 3, 1] + [1] * 7, dtype=torch.float64) / 17
    assert curve.kl("train")[0] == pytest.approx(kl(torch.full((10,), 0.1, dtype=torch.float64), prior))
    assert curve.kl("train")[1] == pytest.approx(0.0, abs=1e-12)
    old = _fake_run(tmp_path / "old", with_probe=False)
    curve = read_prior_curve(old)
    assert curve.source == "checkpoints" and curve.steps == [4]
    assert curve.prior_eval.shape == (1, 10) and float(curve.prior_eval.sum()) == pytest.approx(1.0)


@pytest.mark.slow
def test_cli_dynamics_prior_writes_png_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path, with_probe=True)
    out = tmp_path / "fig" / "prior.png"
    assert main(["dynamics", "prior", "--run", str(run), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    summary = json.loads(out.with_name("prior.png.json").read_text())
    assert summary["fake-run"]["kl_train_mode"]["last"] < summary["fake-run"]["kl_train_mode"]["first"]
    with pytest.raises(SystemExit) as exc:
        main(["dynamics", "--help"])
    assert exc.value.code == 0
    assert "decompose" in capsys.readouterr().out


def test_unified_view_drives_library_components() -> None:
    from dytrim.dynamics.mnist_lt import BatchMaker, load_mnist_lt, make_mlp, observation_digits, warm_up
    from dytrim.dynamics.unified import unified_view

    data, cfg = load_mnist_lt(100.0)
    model = make_mlp(data, hidden=8)
    warm_up(model, BatchMaker(data, cfg), 20)
    x_o, y_o = observation_digits(data, 1)
    with pytest.warns(UserWarning, match=r"the labeled pruning rule .*`dytrim dynamics unified --min-keep 1`"):
        views = {v.name: v for v in unified_view(model, data, cfg, x_o, y_o, ("fixmatch", "reweight", "logit_adjust",
                                                                                "dytrim"), n_lb=16, n_ulb=16)}
    base, rw = views["fixmatch"], views["reweight"]
    assert torch.equal(base.y_lb, rw.y_lb)  # same batch for methods that keep the default sampler
    w = class_weights(data.split.lb_counts, cfg.reweight.kind, cfg.reweight.beta)[base.y_lb]
    assert torch.allclose(rw.G_lb, w[:, None] * base.G_lb, atol=1e-6)  # re-weighting scales G per sample
    assert not torch.allclose(views["logit_adjust"].G_lb, base.G_lb)  # LA turns G's direction
    assert torch.allclose(views["logit_adjust"].G_ulb, base.G_ulb)  # labeled-only LA by default
    w_dy = views["dytrim"].w_ulb
    assert bool(((w_dy - 1).abs() < 1e-6).logical_or((w_dy - 1 / 0.3).abs() < 1e-5).logical_or(w_dy == 0).all())
