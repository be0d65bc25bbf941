"""The real blocks in the benchmark harness (issue 17, part 6): peers, FLOP model, preset
and goals. The timed runs themselves are benchmarks (``tfkernels bench --preset blocks``),
not tests."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

import tfkernels as tfk
from test_harness_mc import _args, _point
from tfkernels import reference
from tfkernels.bench import flops, peers, report, settings, throughput
from tfkernels.cli import bench as bench_cli
from tfkernels.methods import sub_steps

COMBOS = [
    (norm, pos, block)
    for norm, pos, block in itertools.product(
        ("layernorm", "rmsnorm", "sphere"),
        ("pre", "post", "tangent"),
        ("parallel", "sequential", "strang"),
    )
    if pos != "tangent" or norm == "sphere"
]


def _peer_out(name, spec, x0):
    try:
        flow = peers.build(name, spec, 1)
    except peers.PeerUnavailable as exc:
        pytest.skip(str(exc))
    flow.load(x0)
    flow.run()
    return flow.result()


@pytest.mark.parametrize("peer", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("norm, pos, block", COMBOS)
def test_block_peers_agree_with_the_reference(peer, norm, pos, block):
    """Every peer computes the block the reference defines: biases, the norm where it
    sits, the sub-steps, the final norm (float64, to rounding)."""
    if peer == "torch":
        pytest.importorskip("torch")
    if peer == "jax":
        pytest.importorskip("jax")
    p = tfk.TransformerParams.random(
        8, 2, 16, damping=0.5, seed=3, norm=norm, norm_position=pos, block=block,
        bias=True, final_norm=True, causal=block == "sequential",
        activation="gelu_tanh" if norm == "layernorm" else "gelu",
    )  # fmt: skip
    x0 = np.random.default_rng(1).standard_normal((3, 4, 8))
    for method in ("euler", "rk4"):
        spec = peers.flow_spec(p, 3, method, t_final=1.5)
        want = reference.integrate(p, x0, 3, method=method, t_final=1.5)
        got = _peer_out(peer, spec, x0)
        assert np.max(np.abs(got - want)) <= 1e-12 * np.max(np.abs(want))


def test_paper_model_spec_has_no_block():
    p = tfk.TransformerParams.random(8, 2, damping=1.0, seed=0)
    assert peers.flow_spec(p, 2)["block"] is None


def _block(block, attn=True, ffn=True, post=False):
    """The settings ``methods.sub_steps`` reads, duck-typed."""
    return SimpleNamespace(
        block=block,
        attention=attn,
        ffn=ffn,
        linear=None,
        damping=0.0,
        norm="layernorm" if post else None,
        norm_position="post",
    )


def test_sub_steps_follow_the_block_rule():
    assert sub_steps(_block("parallel")) == [(("attn", "ffn"), 1.0, None)]
    assert sub_steps(_block("parallel", attn=False, post=True)) == [(("ffn",), 1.0, "ffn")]
    assert sub_steps(_block("sequential", post=True)) == [
        (("attn",), 1.0, "attn"),
        (("ffn",), 1.0, "ffn"),
    ]
    assert sub_steps(_block("strang")) == [
        (("ffn",), 0.5, None),
        (("attn",), 1.0, None),
        (("ffn",), 0.5, None),
    ]
    assert sub_steps(_block("strang", ffn=False, post=True)) == [(("attn",), 1.0, "attn")]
    # the damping alone makes an FFN sub-layer
    damped = _block("sequential", ffn=False)
    damped.damping = 0.5
    assert sub_steps(damped) == [(("attn",), 1.0, None), (("ffn",), 1.0, None)]


def test_block_flops_count_each_piece():
    T, d, H = 8, 16, 2
    base = flops.FlowConfig(seq_len=T, d=d, n_heads=H, damping=False)
    attn = flops.flops_per_eval(flops.FlowConfig(T, d, H, ffn=False, damping=False))["total"]
    ffn = flops.flops_per_eval(flops.FlowConfig(T, d, H, attention=False, damping=False))["total"]
    comb = flops.stage_combination_flops("heun", T, d)
    # biases only: the paper's layer plus 4·T·d per stage
    b = flops.FlowConfig(T, d, H, damping=False, bias=True)
    assert flops.flops_per_layer(b, "heun") == flops.flops_per_layer(base, "heun") + 2 * 4 * T * d
    # sequential pre-LN: two sub-steps of two stages, a norm in each stage, two combinations
    seq = flops.FlowConfig(T, d, H, damping=False, norm="layernorm", block="sequential")
    ln = flops.NORM_FLOPS["layernorm"] * T * d
    assert flops.flops_per_layer(seq, "heun") == 2 * (attn + ln) + 2 * (ffn + ln) + 2 * comb
    # post-LN Strang: three sub-steps, one norm after each
    st = flops.FlowConfig(
        T, d, H, damping=False, norm="layernorm", norm_position="post", block="strang"
    )
    assert flops.flops_per_layer(st, "heun") == 2 * attn + 4 * ffn + 3 * comb + 3 * ln


def test_blocks_preset_runs_the_real_blocks():
    s = settings.PRESETS["blocks"]
    assert s.goals == "issue17" and s.dtypes == ("float32",)
    names = [c.name for c in s.configs]
    assert names[:4] == ["tiny-gpt2", "small-gpt2", "medium-gpt2", "large-gpt2"]
    assert {c.batch for c in s.configs} == set(settings.MC_BATCHES.values())
    gpt2 = throughput.bench_params(s.configs[0], "float32")
    assert (gpt2.norm, gpt2.norm_position, gpt2.block, gpt2.causal) == (
        "layernorm",
        "pre",
        "sequential",
        True,
    )
    assert gpt2.bq is not None and gpt2.final_norm and gpt2.activation == "gelu_tanh"
    bert = throughput.bench_params(s.configs[-1], "float32")
    assert (bert.norm_position, bert.activation, bert.causal) == ("post", "gelu", False)
    # the paper's model is unchanged by the new field
    paper = throughput.bench_params(settings.Config("tiny", 8, 16, 2), "float64")
    old = tfk.TransformerParams.random(16, 2, damping=1.0, seed=1, dtype=np.float64)
    assert not paper.is_block and np.array_equal(paper.w1, old.w1) and paper.damping == 1.0


def test_issue17_goals_are_judged_per_block():
    tiny = _point("tiny-gpt2", "float32", {"torch": 4.0, "jax": 2.5})
    tiny["model"] = "gpt2"
    assert report.issue17_goal(tiny) == {
        "speedup_need": 2.0,
        "speedup": 2.5,
        "speedup_met": True,
        "met": True,
    }
    large = _point("large-bert", "float32", {"jax": 1.1})
    large["model"] = "bert"
    assert report.issue17_goal(large)["met"] is False
    paper = _point("tiny", "float32", {"jax": 3.0})
    assert report.issue17_goal(paper) is None
    doc = {"settings": {"goals": "issue17"}, "throughput": report.add_goals([tiny], "issue17")}
    assert "goal (issue 17)" in report.throughput_table(doc)[0]
    assert report.goals(doc)[0][1] is True


def test_configs_flag_picks_named_configurations():
    """``--configs`` runs only the named configurations of the preset, in the preset's
    order (a custom sweep); an unknown name, or one beside a ``--d`` grid, is an error
    naming the flag and the preset's names."""
    s = bench_cli.settings_from_args(
        _args("--preset", "blocks", "--configs", "small-bert, small-gpt2")
    )
    assert [c.name for c in s.configs] == ["small-gpt2", "small-bert"]
    assert s.preset == "custom" and {c.batch for c in s.configs} == {2048}
    assert {c.model for c in s.configs} == {"gpt2", "bert"}
    with pytest.raises(ValueError, match="`--configs`: small-gpt3 is not a configuration"):
        bench_cli.settings_from_args(_args("--preset", "blocks", "--configs", "small-gpt3"))
    with pytest.raises(ValueError, match="--configs"):
        bench_cli.settings_from_args(_args("--configs", "tiny", "--d", "16"))
