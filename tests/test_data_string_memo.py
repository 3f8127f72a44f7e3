"""String memorisation with curriculum (OK-RTRL copy task; spec online_rtrl §4.1, tests 8 and 9)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from rnnrepro.api import run
from rnnrepro.config import ConfigError, validate
from rnnrepro.data import build_datamodule
from rnnrepro.data.string_memo import BLANK, MARKER, StringMemo, sample_length, string_memo_sequence

LN2 = math.log(2.0)


def _data(compose_cfg, *overrides, run_seed: int = 0, check: bool = True) -> StringMemo:
    cfg = compose_cfg("dataset=string_memo", *overrides)
    if check:
        validate(cfg)
    data = build_datamodule(cfg.data, run_seed)
    data.setup()
    return data


def _tokens(batch: dict) -> torch.Tensor:
    x = batch["x"]
    assert x.dtype == torch.float32 and x.shape[-1] == 4 and torch.equal(x.sum(-1), torch.ones(x.shape[:2]))
    return x.argmax(-1)


def _stream(data: StringMemo, steps: int) -> dict[str, torch.Tensor]:
    """Concatenates `steps` steps of training batches (time along dim 1), without calling observe."""
    it = data.train_batches(0)
    parts = [next(it) for _ in range(steps // data.chunk_len)]
    return {"x": torch.cat([_tokens(b) for b in parts], 1), "y": torch.cat([b["y"] for b in parts], 1),
            "reset": torch.cat([b["reset"] for b in parts], 1)}


def test_sequence_layout_for_T3():
    bits = torch.tensor([1, 0, 1])
    inp, tgt = string_memo_sequence(bits)
    assert inp.tolist() == [2, 1, 0, 1, 3, 3, 3, 3]  # [2, b1, b2, b3, 3, 3, 3, 3]
    assert tgt.tolist() == [3, 3, 3, 3, 2, 1, 0, 1]  # [3, 3, 3, 3, 2, b1, b2, b3]: lag T + 1
    inp, tgt = string_memo_sequence(bits, echo_marker=False)
    assert tgt.tolist() == [3, 3, 3, 3, 3, 1, 0, 1]
    batched, _ = string_memo_sequence(torch.tensor([[0, 0, 1], [1, 1, 0]]))
    assert batched.shape == (2, 8) and batched[1].tolist() == [2, 1, 1, 0, 3, 3, 3, 3]


def test_module_generates_the_T3_layout(compose_cfg):
    data = _data(compose_cfg, "data.initial_T=3", "data.len_jitter=0", "data.batch_size=4")
    s = _stream(data, 8)
    assert data.spec.input_size == 4 and data.spec.output_size == 4 and data.spec.vocab_size is None
    assert data.spec.metric == "bpc"
    for b in range(4):
        bits = s["x"][b, 1:4].tolist()
        assert set(bits) <= {0, 1}
        assert s["x"][b].tolist() == [2, *bits, 3, 3, 3, 3]
        assert s["y"][b].tolist() == [3, 3, 3, 3, 2, *bits]
        assert s["reset"][b].tolist() == [True] + [False] * 7


@pytest.mark.parametrize("T, jitter, expected", [(10, 4, set(range(6, 11))), (3, 4, {1, 2, 3}), (1, 4, {1}),
                                                 (10, 5, set(range(5, 11))), (7, 0, {7})])
def test_sampled_lengths_cover_T_minus_jitter_to_T(T, jitter, expected):
    g = torch.Generator().manual_seed(0)
    assert {sample_length(T, jitter, g) for _ in range(500)} == expected


def _segments(x: torch.Tensor, y: torch.Tensor, reset: torch.Tensor) -> list[tuple[list, list, bool]]:
    """Splits one stream at its reset marks: (inputs, targets, complete) per sequence."""
    starts = reset.nonzero().flatten().tolist()
    assert starts[0] == 0
    ends = starts[1:] + [len(x)]
    return [(x[s:e].tolist(), y[s:e].tolist(), i < len(starts) - 1) for i, (s, e) in enumerate(zip(starts, ends))]


def test_resets_mark_exactly_the_first_step_of_each_sequence(compose_cfg):
    data = _data(compose_cfg, "data.initial_T=6", "data.batch_size=5", "data.chunk_len=25",
                 "data.steps_per_epoch=400")
    s = _stream(data, 400)
    assert s["x"].shape == (5, 400) and s["reset"].dtype == torch.bool
    lengths = set()
    for b in range(5):
        for inp, tgt, complete in _segments(s["x"][b], s["y"][b], s["reset"][b]):
            t_seq = next((i for i, v in enumerate(inp[1:]) if v == BLANK), len(inp) - 1)
            if complete:
                assert len(inp) == 2 * t_seq + 2
                lengths.add(t_seq)
            ref_inp, ref_tgt = string_memo_sequence(torch.tensor(inp[1 : t_seq + 1]))
            assert inp == ref_inp.tolist()[: len(inp)] and tgt == ref_tgt.tolist()[: len(tgt)]
            assert inp[0] == MARKER and MARKER not in inp[1:]  # every marker is flagged by a reset
    assert lengths == {2, 3, 4, 5, 6}  # T - 4 .. T with T = 6 (no curriculum step: no losses observed)


def test_streams_are_independent(compose_cfg):
    data = _data(compose_cfg, "data.initial_T=8", "data.batch_size=16", "data.chunk_len=10", "data.steps_per_epoch=200")
    s = _stream(data, 200)
    # own phases: streams restart at different steps, and each reset concerns its own stream only
    patterns = {tuple(r.nonzero().flatten().tolist()) for r in s["reset"]}
    assert len(patterns) > 8
    assert not s["reset"][:, 1:].all(0).any()
    # own bits: the first sequence of each stream differs from the others'
    firsts = {tuple(s["x"][b, 1:5].tolist()) for b in range(16)}
    assert len(firsts) > 8


def test_curriculum_follows_a_scripted_loss_sequence(compose_cfg):
    """Test 9: T increments exactly when the EMA (decay 0.999, init 1.0) is below 0.15 at a sequence start, and the
    EMA is 0.3 right after."""
    data = _data(compose_cfg, "data.initial_T=4", "data.len_jitter=2", "data.batch_size=3")
    assert data.T == 4 and data.ema == 1.0
    g = torch.Generator().manual_seed(1)
    ema, T, increments, below_without_start = 1.0, 4, [], 0
    it = data.train_batches(0)
    for step in range(9000):
        if step and step % data.num_train_batches() == 0:
            it = data.train_batches(step // data.num_train_batches())
        batch = next(it)
        starts = bool(batch["reset"][:, 0].any())
        if starts and ema < 0.15:
            T, ema = T + 1, 0.3
            increments.append(step)
            assert data.train_extras() == {"curriculum_T": float(T), "curriculum_ema_bits": 0.3}
        elif ema < 0.15:
            below_without_start += 1
        assert data.T == T and data.ema == pytest.approx(ema, abs=1e-12)
        # scripted losses: mostly small, with occasional bursts that delay the next crossing
        loss_nats = 0.02 if step % 1000 < 980 else 1.0
        loss = torch.tensor([loss_nats + 0.01 * float(torch.rand(1, generator=g))])
        data.observe(loss)
        ema = 0.999 * ema + 0.001 * float(loss) / LN2
    assert len(increments) >= 3 and T == data.T == 4 + len(increments)
    assert below_without_start > 0  # the EMA was below the threshold between starts: T waited for a start


def test_T_increases_at_most_once_per_step_when_many_streams_start(compose_cfg):
    data = _data(compose_cfg, "data.initial_T=1", "data.len_jitter=0", "data.batch_size=16",
                 "data.curriculum.ema_decay=0.5")
    it = data.train_batches(0)
    for _ in range(4):  # one full sequence (2T + 2 = 4 steps) in every stream
        next(it)
        data.observe(torch.zeros(1))
    assert data.ema < 0.15
    batch = next(it)
    assert batch["reset"][:, 0].all()  # all 16 streams start together
    assert data.T == 2 and data.ema == 0.3


def test_chunk_len_1_is_lazy_so_the_curriculum_changes_the_next_sequence(compose_cfg):
    over = ["data.initial_T=1", "data.len_jitter=0", "data.batch_size=2", "data.curriculum.ema_decay=0.5"]
    a, b = _data(compose_cfg, *over), _data(compose_cfg, *over)
    ita, itb = a.train_batches(0), b.train_batches(0)
    for _ in range(4):
        next(ita), next(itb)
    assert a.steps_generated == 4  # nothing generated ahead of consumption
    for _ in range(3):
        a.observe(torch.zeros(1))  # EMA 0.125 < 0.15 before the next step exists
    sa = torch.cat([next(ita)["x"].argmax(-1) for _ in range(6)], 1)
    sb = torch.cat([next(itb)["x"].argmax(-1) for _ in range(6)], 1)
    assert a.T == 2 and b.T == 1
    assert sa[0, 0] == MARKER and sa[0, 3:].tolist() == [3, 3, 3]  # T_seq = 2: marker, 2 bits, 3 blanks
    assert sb[0, 0] == MARKER and sb[0, 4] == MARKER  # T_seq = 1: a new sequence every 4 steps


def test_long_chunks_check_the_curriculum_once_per_generated_step(compose_cfg):
    data = _data(compose_cfg, "data.initial_T=1", "data.len_jitter=0", "data.batch_size=2", "data.chunk_len=12",
                 "data.steps_per_epoch=120", "data.curriculum.ema_init=0.1")
    batch = next(data.train_batches(0))
    # EMA 0.1 < 0.15 at the first start: T -> 2 and EMA -> 0.3; no loss observed inside the chunk, so no more steps
    assert data.T == 2 and data.ema == 0.3
    assert batch["x"].shape == (2, 12, 4) and batch["reset"][0].nonzero().flatten().tolist() == [0, 6]
    with pytest.raises(ValueError, match="12"):  # more losses than the chunk's steps
        data.observe(torch.zeros(13))
    data.observe(torch.zeros(12))
    assert data.ema == pytest.approx(0.3 * 0.999**12)
    data.observe(torch.zeros(5))  # a prefix: a budget that ended inside the chunk
    assert data.ema == pytest.approx(0.3 * 0.999**17)


def test_checkpoint_state_round_trip_continues_identically(compose_cfg):
    over = ["data.initial_T=3", "data.batch_size=4", "data.curriculum.ema_decay=0.9"]
    a = _data(compose_cfg, *over)
    g = torch.Generator().manual_seed(0)
    losses = [torch.rand(1, generator=g) * 0.1 for _ in range(400)]
    it = a.train_batches(0)
    for t in range(150):
        next(it)
        a.observe(losses[t])
    buffer = io.BytesIO()
    torch.save(a.checkpoint_state(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    b = _data(compose_cfg, *over, run_seed=123)  # a different run seed: everything must come from the state
    b.load_checkpoint_state(state)
    assert (b.T, b.ema) == (a.T, a.ema)
    saved_T = a.T
    itb = b.train_batches(0, start_batch=150)
    for t in range(150, 400):
        ba, bb = next(it), next(itb)
        for key in ("x", "y", "reset"):
            assert torch.equal(ba[key], bb[key]), (t, key)
        a.observe(losses[t])
        b.observe(losses[t])
        assert (a.T, a.ema) == (b.T, b.ema)
    assert a.T > saved_T  # the curriculum moved during the compared stretch
    assert len(list(b.train_batches(0, start_batch=990))) == 10


def test_eval_sequences_have_the_current_T_and_are_fixed(compose_cfg):
    data = _data(compose_cfg, "data.initial_T=5", "data.n_val=70", "data.n_test=40", "data.eval_batch_size=32")
    val = list(data.eval_batches("val"))
    assert [b["x"].shape for b in val] == [(32, 12, 4), (32, 12, 4), (6, 12, 4)]
    assert all("reset" not in b and "mask" not in b for b in val)
    x = torch.cat([b["x"].argmax(-1) for b in val])
    y = torch.cat([b["y"] for b in val])
    ref_x, ref_y = string_memo_sequence(x[:, 1:6])
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    again = torch.cat([b["x"].argmax(-1) for b in data.eval_batches("val")])
    test = torch.cat([b["x"].argmax(-1) for b in data.eval_batches("test")])
    assert torch.equal(x, again) and test.shape == (40, 12) and not torch.equal(test[:40], x[:40])
    data.T = 7
    assert next(data.eval_batches("val"))["x"].shape == (32, 16, 4)
    with pytest.raises(KeyError):
        next(data.eval_batches("train"))
    assert data.describe()["curriculum_T"] == 7 and data.describe()["sizes"] == {"val": 70, "test": 40}


def test_recall_positions_mask_and_metric(compose_cfg):
    """The data module's side of curriculum.metric=recall_positions (validate() refuses it for training runs: no
    algorithm passes per-stream losses yet)."""
    overrides = ("data.initial_T=2", "data.len_jitter=0", "data.batch_size=2", "data.chunk_len=6",
                 "data.steps_per_epoch=60", "data.loss_positions=recall", "data.curriculum.metric=recall_positions",
                 "data.curriculum.ema_decay=0.5")
    with pytest.raises(ConfigError, match="curriculum.metric=all_positions"):
        validate(compose_cfg("dataset=string_memo", *overrides))
    data = _data(compose_cfg, *overrides, check=False)
    batch = next(data.train_batches(0))
    assert batch["mask"][0].tolist() == [False, False, False, True, True, True]
    with pytest.raises(ValueError, match="per-stream"):
        data.observe(torch.zeros(6))
    per_stream = torch.full((2, 6), 5.0)
    per_stream[:, 3:] = 0.0  # zero loss on the recall positions only
    data.observe(per_stream)
    assert data.ema == pytest.approx(0.5**3)  # only the 3 recall steps count
    eval_batch = next(data.eval_batches("val"))
    assert eval_batch["mask"][0].tolist() == [False, False, False, True, True, True]


@pytest.mark.parametrize("override, key", [("data.chunk_len=0", "data.chunk_len"),
                                           ("data.initial_T=0", "data.initial_T"),
                                           ("data.len_jitter=-1", "data.len_jitter"),
                                           ("data.steps_per_epoch=0", "data.steps_per_epoch"),
                                           ("data.curriculum.ema_decay=1.5", "data.curriculum.ema_decay"),
                                           ("data.curriculum.threshold_bits=-1", "data.curriculum.threshold_bits"),
                                           ("data.n_val=0", "data.n_val")])
def test_invalid_values_name_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("dataset=string_memo", override))
    assert str(err.value).startswith(key)


def test_train_extras_and_describe_defaults(compose_cfg):
    data = _data(compose_cfg)
    assert data.train_extras() == {"curriculum_T": 1.0, "curriculum_ema_bits": 1.0}
    d = data.describe()
    assert d["curriculum"] == {"ema_decay": 0.999, "ema_init": 1.0, "threshold_bits": 0.15, "ema_reset": 0.3,
                               "metric": "all_positions"}
    assert d["len_jitter"] == 4 and d["echo_marker"] is True and d["chunk_len"] == 1 and d["streams"] == 16
    assert data.num_train_batches() == 1000
    copy.deepcopy(data.checkpoint_state())


def test_short_run_through_the_cli_path(compose_cfg, tmp_path):
    out = tmp_path / "sm"
    summary = run(compose_cfg("dataset=string_memo", "model=lstm", "data.steps_per_epoch=8", output_dir=out))
    assert summary["status"] == "completed" and summary["dataset"] == "string_memo" and summary["metric"] == "bpc"
    for name in ("config.yaml", "metrics.csv", "summary.json", "last.pt"):
        assert (out / name).exists(), name


def test_best_validation_is_the_largest_curriculum_T_then_the_lowest_bpc(compose_cfg, tmp_path):
    """The copy task's bpc is measured at a T that grows, so best.pt and test_at_best_val select the evaluation at
    the largest T, ties broken by the lower bpc; each val row records the T it was measured at. Here T grows at
    every sequence start (threshold 5 bits), so the bpc-only rule would have picked the first, shortest evaluation."""
    import pandas as pd

    out = tmp_path / "sel"
    summary = run(compose_cfg("dataset=string_memo", "model=lstm", "data.steps_per_epoch=8",
                              "data.curriculum.threshold_bits=5", "trainer.max_steps=8", "trainer.eval_every_n_steps=2",
                              output_dir=out))
    assert summary["selection"] == [["curriculum_T", "max"], ["bpc", "min"]]
    val = pd.read_csv(out / "metrics.csv").query("split == 'val'")
    assert len(val) >= 4 and val.curriculum_T.is_monotonic_increasing and val.curriculum_T.nunique() > 1
    top = val[val.curriculum_T == val.curriculum_T.max()]
    chosen = top.loc[top.bpc.idxmin()]
    assert summary["best_step"] == int(chosen.step) and summary["best_val"] == pytest.approx(float(chosen.bpc))
    assert int(chosen.step) != int(val.loc[val.bpc.idxmin()].step)  # not what bpc alone selects


def test_a_batch_without_targets_has_zero_loss_not_nan():
    """loss_positions=recall: before any stream reaches its output phase the mask is all False."""
    from rnnrepro.tasks import TaskType, build_task

    task = build_task(TaskType.classify_each, metric="bpc")
    out = torch.randn(3, 1, 4, requires_grad=True)
    loss = task.loss(out, {"y": torch.zeros(3, 1, dtype=torch.long), "mask": torch.zeros(3, 1, dtype=torch.bool)})
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(out.grad, torch.zeros_like(out))
