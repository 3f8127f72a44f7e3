"""Structured config schemas, registered in Hydra's ConfigStore.

YAML files under ``conf/`` extend these schemas through their defaults lists, so a misspelled key or a value of the
wrong type fails while Hydra composes the config. Enum fields list their allowed values in that error. Range checks
(learning rate > 0, hidden size >= 1, ...) live in ``__post_init__`` and run in :func:`validate`, which ``run`` calls
before any data is touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that composes but makes no sense; the message names the key and the fix."""


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _positive(value: float, key: str) -> None:
    _require(value > 0, key, f"must be > 0, got {value}. Set it on the command line, e.g. {key}=0.001")


# ----------------------------------------------------------------------------------------------------------- models
class SBOSolver(str, Enum):
    sgd = "sgd"
    shb = "shb"
    snag = "snag"


class SBORecurrent(str, Enum):
    dense_lowrank = "dense_lowrank"
    sparse = "sparse"
    full = "full"
    diagonal = "diagonal"


class SBOGradImpl(str, Enum):
    elementwise = "elementwise"
    dense_diag = "dense_diag"


class AntisymParam(str, Enum):
    triu = "triu"
    full = "full"


class AntisymInitOn(str, Enum):
    antisym = "antisym"
    free_W = "free_W"


class InitScale(str, Enum):
    variance = "variance"
    std_bug = "std_bug"


class CellImpl(str, Enum):
    fused = "fused"
    cell = "cell"


class CellInit(str, Enum):
    default = "default"  # torch's nn.RNN / nn.GRU / nn.LSTM init, U(-1/sqrt(n), 1/sqrt(n))
    uniform = "uniform"  # weights U(-model.init_range, model.init_range), biases 0 (TF BasicLSTMCell)


class LayerInit(str, Enum):
    default = "default"  # torch's own init of nn.Embedding / nn.Linear
    uniform = "uniform"  # weight and bias U(-init_range, init_range) (TF PTB tutorial: every variable)
    uniform_weight = "uniform_weight"  # weight U(-init_range, init_range), bias 0 (pytorch/examples decoder)


@dataclass
class DropoutConfig:
    """The dropout family (all off by default, all inactive in eval; rnnrepro/models.py)."""

    input: float = 0.0  # on the encoder output (pytorch/examples dropout on the embedding; awd dropouti)
    between: float = 0.0  # between stacked layers (torch's module dropout; awd dropouth)
    output: float = 0.0  # on the last layer's output, before the head (awd dropout)
    embedding: float = 0.0  # word-level: whole embedding rows zeroed (awd dropoute)
    weight: float = 0.0  # DropConnect on the recurrent matrices (awd wdrop)
    locked: bool = False  # input/between/output: one mask per sequence, shared across time steps (awd)

    def __post_init__(self) -> None:
        for key in ("input", "between", "output", "embedding", "weight"):
            value = getattr(self, key)
            _require(0 <= value < 1, f"model.dropout.{key}", f"must be in [0, 1), got {value}")


@dataclass
class ModelConfig:
    """Keys every model has: the cell's size and the sequence-model recipe around it (rnnrepro/models.py)."""

    _target_: str = MISSING
    name: str = MISSING
    hidden_size: int = 128
    num_layers: int = 1  # stacked layers; torch's fused multi-layer module where the cell has one
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    tie_weights: bool = False  # head weight = embedding weight (needs data.embedding_size == hidden_size)
    embedding_init: LayerInit = LayerInit.default
    head_init: LayerInit = LayerInit.default
    init_range: float = 0.1  # the bound of every "uniform" init (embedding, head, and the classic cells' init)

    def __post_init__(self) -> None:
        _require(self.hidden_size >= 1, "model.hidden_size", f"must be >= 1, got {self.hidden_size}")
        _require(self.num_layers >= 1, "model.num_layers", f"must be >= 1, got {self.num_layers}")
        _positive(self.init_range, "model.init_range")
        _require(self.num_layers > 1 or self.dropout.between == 0, "model.dropout.between",
                 "acts between layers, but model.num_layers=1; set model.num_layers>=2 or model.dropout.between=0")


@dataclass
class RNNConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.classic.TanhRNN"
    name: str = "rnn"
    impl: CellImpl = CellImpl.fused
    init: CellInit = CellInit.default


@dataclass
class IRNNConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.classic.IRNN"
    name: str = "irnn"
    impl: CellImpl = CellImpl.fused
    identity_scale: float = 1.0


@dataclass
class GRUConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.classic.GRU"
    name: str = "gru"
    impl: CellImpl = CellImpl.fused
    init: CellInit = CellInit.default


@dataclass
class LSTMConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.classic.LSTM"
    name: str = "lstm"
    impl: CellImpl = CellImpl.fused
    init: CellInit = CellInit.default
    forget_bias: float = 1.0


@dataclass
class AntisymConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.antisymmetric.AntisymmetricRNN"
    name: str = "antisym"
    impl: CellImpl = CellImpl.fused  # fused: whole-sequence Function, hand-written backward | cell: shared runner
    eps: float = 0.01
    gamma: float = 0.01
    sigma_w: float = 1.0
    gated: bool = False
    param: AntisymParam = AntisymParam.triu
    init_on: AntisymInitOn = AntisymInitOn.antisym
    init_scale: InitScale = InitScale.variance
    gate_bias_init: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self.eps, "model.eps")
        _require(self.gamma >= 0, "model.gamma", f"must be >= 0, got {self.gamma} (gamma = 0 diverges under forward "
                 "Euler, Proposition 2; the paper's grid is 0.001..1)")
        _require(self.sigma_w >= 0, "model.sigma_w", f"must be >= 0, got {self.sigma_w}")


class RHNCandidate(str, Enum):
    two_sigmoid_minus_one = "two_sigmoid_minus_one"  # the OK code: 2 sigmoid(z) - 1 = tanh(z / 2)
    tanh = "tanh"


@dataclass
class RHNConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.rhn.RHN"
    name: str = "rhn"
    candidate: RHNCandidate = RHNCandidate.two_sigmoid_minus_one
    init_std: float = 0.01
    readout_init_std: float | None = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self.init_std, "model.init_std")
        _require(self.readout_init_std is None or self.readout_init_std > 0, "model.readout_init_std",
                 f"must be > 0 or null, got {self.readout_init_std}")


@dataclass
class SBOConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.sbo.SBORNN"
    name: str = "sbo"
    impl: CellImpl = CellImpl.fused  # fused: whole-sequence Function, hand-written backward | cell: shared runner
    solver: SBOSolver = SBOSolver.sgd
    recurrent: SBORecurrent = SBORecurrent.dense_lowrank
    rank: int = 50
    eta: float = 1e-3
    mu: float = 0.5
    learn_mu: bool = True
    alpha: float = 1.0
    train_recurrent: bool = True
    grad_impl: SBOGradImpl = SBOGradImpl.elementwise

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self.eta, "model.eta")
        _positive(self.alpha, "model.alpha")
        _require(self.rank >= 1, "model.rank", f"must be >= 1, got {self.rank}")


# ------------------------------------------------------------------------------------------------------------ data
class Normalize(str, Enum):
    none = "none"
    mean_std = "mean_std"
    repo_bug_uint8 = "repo_bug_uint8"


@dataclass
class DataConfig:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    download: bool = True
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    split_seed: int = 0  # task randomness (validation split, generated sets), independent of the run seed

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.eval_batch_size >= 1, "data.eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")


@dataclass
class SplitDataConfig(DataConfig):
    """A dataset whose validation set is carved from its official training set."""

    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0 < self.val_fraction < 1, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")


class AddingMarkers(str, Enum):
    halves = "halves"
    uniform = "uniform"


@dataclass
class GeneratedDataConfig(DataConfig):
    """A generated task: fixed, seeded train / validation / test sets (seeded by data.split_seed)."""

    n_train: int = 100_000
    n_val: int = 10_000
    n_test: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("n_train", "n_val", "n_test"):
            _require(getattr(self, key) >= 1, f"data.{key}", f"must be >= 1, got {getattr(self, key)}")


@dataclass
class AddingDataConfig(GeneratedDataConfig):
    _target_: str = "rnnrepro.data.synthetic.AddingProblem"
    name: str = "adding"
    seq_len: int = 100
    markers: AddingMarkers = AddingMarkers.halves

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.seq_len >= 2, "data.seq_len", f"must be >= 2, got {self.seq_len}")


@dataclass
class CopyMemoryDataConfig(GeneratedDataConfig):
    _target_: str = "rnnrepro.data.synthetic.CopyMemory"
    name: str = "copy_memory"
    lag: int = 100
    metric: str = "loss"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.lag >= 1, "data.lag", f"must be >= 1, got {self.lag}")
        _require(self.metric in ("loss", "acc"), "data.metric", f"must be loss or acc, got {self.metric!r}")


class CurriculumMetric(str, Enum):
    all_positions = "all_positions"
    recall_positions = "recall_positions"


class LossPositions(str, Enum):
    all = "all"
    recall = "recall"


@dataclass
class CurriculumConfig:
    """String-memorisation curriculum (OK code): an EMA of the per-step cross-entropy in bits; when a stream starts a
    new sequence and the EMA is below threshold_bits, T += 1 and the EMA is set to ema_reset."""

    ema_decay: float = 0.999
    ema_init: float = 1.0  # -log2(0.5)
    threshold_bits: float = 0.15  # 0 disables the curriculum (T stays at initial_T)
    ema_reset: float = 0.3
    metric: CurriculumMetric = CurriculumMetric.all_positions  # recall_positions: harness option, not in the OK code

    def __post_init__(self) -> None:
        _require(0 < self.ema_decay < 1, "data.curriculum.ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        for key in ("ema_init", "threshold_bits", "ema_reset"):
            _require(getattr(self, key) >= 0, f"data.curriculum.{key}", f"must be >= 0, got {getattr(self, key)}")


@dataclass
class StringMemoDataConfig(DataConfig):
    _target_: str = "rnnrepro.data.string_memo.StringMemo"
    name: str = "string_memo"
    batch_size: int = 16  # independent streams
    eval_batch_size: int = 256
    chunk_len: int = 1  # steps per training batch; 1 = the OK code's order (curriculum sees every step's loss)
    steps_per_epoch: int = 1000  # an "epoch" is a logging unit of the infinite stream
    len_jitter: int = 4  # T_seq = max(1, T - U), U ~ uniform{0..len_jitter}; 4 = OK code, 5 = seed summary
    initial_T: int = 1
    echo_marker: bool = True  # the output phase reproduces the start marker, then the bits (OK code)
    loss_positions: LossPositions = LossPositions.all  # recall: mask = output phase only
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    n_val: int = 256  # evaluation sequences of exactly the current T
    n_test: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.chunk_len >= 1, "data.chunk_len", f"must be >= 1, got {self.chunk_len}")
        _require(self.steps_per_epoch >= self.chunk_len, "data.steps_per_epoch",
                 f"must be >= data.chunk_len ({self.chunk_len}), got {self.steps_per_epoch}")
        _require(self.len_jitter >= 0, "data.len_jitter", f"must be >= 0, got {self.len_jitter}")
        _require(self.initial_T >= 1, "data.initial_T", f"must be >= 1, got {self.initial_T}")
        for key in ("n_val", "n_test"):
            _require(getattr(self, key) >= 1, f"data.{key}", f"must be >= 1, got {getattr(self, key)}")


@dataclass
class MNISTDataConfig(SplitDataConfig):
    _target_: str = "rnnrepro.data.mnist.SequentialMNIST"
    name: str = "smnist"
    permutation: str = "identity"
    normalize: Normalize = Normalize.mean_std
    pixels_per_step: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.pixels_per_step >= 1 and 784 % self.pixels_per_step == 0, "data.pixels_per_step",
                 f"must divide 784 (1, 2, 4, 7, 14, 16, 28, ...), got {self.pixels_per_step}")
        from rnnrepro.data.permutations import check_permutation_name

        check_permutation_name(self.permutation)


class InputEncoding(str, Enum):
    embedding = "embedding"
    one_hot = "one_hot"


@dataclass
class PTBWordDataConfig(DataConfig):
    _target_: str = "rnnrepro.data.lm.PTBWord"
    name: str = "ptb_word"  # wikitext2 uses the same schema (_target_ WikiText2); ptb_char extends it
    bptt: int = 35
    embedding_size: int = 200
    test_batch_size: int | None = None  # columns of the test stream; null: eval_batch_size (awd-lstm-lm, TF PTB: 1)
    drop_last_window: bool = False  # train/val skip the final window shorter than bptt (TF ptb_producer)
    verify_checksums: bool = True
    input_encoding: InputEncoding = InputEncoding.embedding  # one_hot: parameter-free, cell input = vocabulary
    train_reset_every: int | None = None  # N: training batches carry reset at column positions % N == 0 (OK PTB: 100)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.bptt >= 1, "data.bptt", f"must be >= 1, got {self.bptt}")
        _require(self.test_batch_size is None or self.test_batch_size >= 1, "data.test_batch_size",
                 f"must be >= 1 or null, got {self.test_batch_size}")
        _require(self.embedding_size >= 1, "data.embedding_size", f"must be >= 1, got {self.embedding_size}")
        _require(self.train_reset_every is None or self.train_reset_every >= 1, "data.train_reset_every",
                 f"must be >= 1 or null, got {self.train_reset_every}")


class PTBCharEncoding(str, Enum):
    ptb_char_files = "ptb_char_files"
    words_joined = "words_joined"
    bytes_of_word_level = "bytes_of_word_level"


@dataclass
class PTBCharDataConfig(PTBWordDataConfig):
    _target_: str = "rnnrepro.data.lm.PTBChar"
    name: str = "ptb_char"
    # ptb_char_files (ptb.char.* if present, else words_joined) | words_joined | bytes_of_word_level (OK paper)
    encoding: PTBCharEncoding = PTBCharEncoding.ptb_char_files


class MusicFormat(str, Enum):
    mat = "mat"
    pickle = "pickle"


@dataclass
class MusicDataConfig(DataConfig):
    _target_: str = "rnnrepro.data.music.PolyphonicMusic"
    name: str = "jsb"
    file_format: MusicFormat = MusicFormat.mat
    verify_checksums: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        names = ("jsb", "nottingham", "musedata", "pianomidi")
        _require(self.name in names, "data.name", f"must be one of {', '.join(names)}, got {self.name!r}")


@dataclass
class ATISDataConfig(DataConfig):
    _target_: str = "rnnrepro.data.atis.ATIS"
    name: str = "atis"
    fold: int = 0
    embedding_size: int = 128
    verify_checksums: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.fold in range(5), "data.fold", f"must be 0, 1, 2, 3 or 4, got {self.fold}")
        _require(self.embedding_size >= 1, "data.embedding_size", f"must be >= 1, got {self.embedding_size}")


class ClassifyLoss(str, Enum):
    ce = "ce"
    softmax_mse = "softmax_mse"  # SBO-RNN code comment for HAR-2: softmax, then MSE against the one-hot target


@dataclass
class HAR2DataConfig(SplitDataConfig):
    _target_: str = "rnnrepro.data.har.HAR2"
    name: str = "har2"
    loss: ClassifyLoss = ClassifyLoss.softmax_mse
    head_outputs: int | None = None  # None: 2 classes; 10: the SBO-RNN code's hard-wired 10-way head

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.head_outputs is None or self.head_outputs >= 2, "data.head_outputs",
                 f"must be >= 2 (the two HAR-2 classes) or null, got {self.head_outputs}")


class CIFARNormalize(str, Enum):
    channel_mean_std = "channel_mean_std"
    none = "none"


class NoiseMode(str, Enum):
    fresh = "fresh"
    fixed_once = "fixed_once"


@dataclass
class CIFARDataConfig(SplitDataConfig):
    _target_: str = "rnnrepro.data.cifar.PixelCIFAR10"
    name: str = "pcifar10"
    val_fraction: float = 0.1
    normalize: CIFARNormalize = CIFARNormalize.channel_mean_std
    verify_checksums: bool = True


@dataclass
class NoisyCIFARDataConfig(CIFARDataConfig):
    _target_: str = "rnnrepro.data.cifar.NoisyCIFAR10"
    name: str = "npcifar10"
    noise: NoiseMode = NoiseMode.fresh


@dataclass
class TIMITDataConfig(DataConfig):
    _target_: str = "rnnrepro.data.timit.TIMIT"
    name: str = "timit"
    swap_val_test: bool = False


# ------------------------------------------------------------------------------------------------ optimisation
@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _positive(self.lr, "optimizer.lr")
        _require(self.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0 <= self.momentum < 1, "optimizer.momentum", f"must be in [0, 1), got {self.momentum}")


@dataclass
class AdagradConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adagrad"
    eps: float = 1e-10


@dataclass
class RMSpropConfig(OptimizerConfig):
    _target_: str = "torch.optim.RMSprop"
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0


class SchedulerName(str, Enum):
    none = "none"
    step = "step"
    linear = "linear"
    decay_after = "decay_after"


class ScheduleInterval(str, Enum):
    step = "step"
    epoch = "epoch"


class LinearTarget(str, Enum):
    lr = "lr"
    weight_decay = "weight_decay"


@dataclass
class SchedulerConfig:
    name: SchedulerName = SchedulerName.none
    interval: ScheduleInterval = ScheduleInterval.epoch
    # step: multiply the lr by gamma every step_size intervals
    step_size: int = 50
    gamma: float = 0.5
    # linear: move `target` from start_factor to end_factor (times its initial value) over the run
    target: LinearTarget = LinearTarget.lr
    start_factor: float = 1.0
    end_factor: float = 0.0
    # decay_after: lr * gamma ** max(0, count - after + 1) at interval count (0-based): `after` intervals at the
    # initial lr, then one factor of gamma per interval (TF PTB tutorial: after = max_epoch, gamma = lr_decay)
    after: int = 4

    def __post_init__(self) -> None:
        _require(self.step_size >= 1, "scheduler.step_size", f"must be >= 1, got {self.step_size}")
        _positive(self.gamma, "scheduler.gamma")
        _require(self.after >= 0, "scheduler.after", f"must be >= 0, got {self.after}")
        _require(self.start_factor >= 0 and self.end_factor >= 0, "scheduler.start_factor/end_factor",
                 "must be >= 0")


# --------------------------------------------------------------------------------------------------- training
class AlgorithmName(str, Enum):
    bptt = "bptt"
    tbptt = "tbptt"
    rtrl = "rtrl"
    uoro = "uoro"
    kf_rtrl = "kf_rtrl"
    ok = "ok"


class OKSplit(str, Enum):
    symmetric = "symmetric"  # a^(-1/2) s_j w_k[j] on both sides: the minimum variance S^2/(m-1) - sum d^2
    official = "official"  # the OK code's split (u-side / sqrt(d_j), A-side * sqrt(d_j)): unbiased, more variance


class RTRLJacobians(str, Enum):
    auto = "auto"  # the Kronecker form (h_hat, D, H) when the cell has one, else autograd
    kronecker = "kronecker"
    autograd = "autograd"  # per-sample Jacobians of any cell via torch.func; O(n^4) time, small n only


@dataclass
class TBPTTConfig:
    truncation: int = 25  # k: backpropagate through windows of k steps, one update per window

    def __post_init__(self) -> None:
        _require(self.truncation >= 1, "algorithm.tbptt.truncation", f"must be >= 1, got {self.truncation}")


@dataclass
class OKConfig:
    rank: int = 16  # r Kronecker terms (OK paper: 16 on the copy task, 8 on CHAR-PTB)
    split: OKSplit = OKSplit.symmetric
    rebalance: bool = True  # u_k <- g u_k, A_k <- A_k / g with g = sqrt(|A_k| / |u_k|) (the OK code, for stability)

    def __post_init__(self) -> None:
        _require(self.rank >= 1, "algorithm.ok.rank", f"must be >= 1, got {self.rank}")


@dataclass
class UOROConfig:
    eps: float = 1e-7  # added inside the rho ratios so zero-initialised factors give no 0/0

    def __post_init__(self) -> None:
        _positive(self.eps, "algorithm.uoro.eps")


@dataclass
class AlgorithmConfig:
    name: AlgorithmName = AlgorithmName.bptt
    # Online algorithms (rtrl, uoro, kf_rtrl, ok): apply the accumulated gradient every N time steps (1 = fully
    # online, as the OK paper). Each step's loss is scaled by 1/N, so an update applies the mean over its N steps.
    update_every: int = 1
    # Clip the recurrent cell's gradient alone to this L2 norm (the OK code clips W, 1.0 copy / 100 PTB, and leaves
    # the readout unclipped); trainer.grad_clip clips all parameters together. Works with every algorithm.
    clip_cell: float | None = None
    tbptt: TBPTTConfig = field(default_factory=TBPTTConfig)
    ok: OKConfig = field(default_factory=OKConfig)
    uoro: UOROConfig = field(default_factory=UOROConfig)
    rtrl_jacobians: RTRLJacobians = RTRLJacobians.auto

    def __post_init__(self) -> None:
        _require(self.update_every >= 1, "algorithm.update_every", f"must be >= 1, got {self.update_every}")
        _require(self.clip_cell is None or self.clip_cell > 0, "algorithm.clip_cell",
                 f"must be > 0 or null, got {self.clip_cell}")


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    max_steps: int | None = None  # optimizer steps; whichever budget ends first stops the run
    eval_every_n_steps: int | None = None  # None: evaluate at the end of each epoch
    limit_eval_batches: int | None = None  # for smoke runs only; recorded in the summary
    grad_clip: float | None = None  # max global L2 norm
    device: str = "auto"
    deterministic: bool = False
    num_threads: int | None = None
    progress_bar: bool = True  # shown only on a terminal
    log_every_s: float = 30.0  # off a terminal: a progress line every N seconds (0 disables)
    flush_denormal: bool = True  # CPU: treat denormal floats as zero (x86 denormal arithmetic is very slow)
    checkpoint: bool = True

    def __post_init__(self) -> None:
        _require(self.max_epochs >= 1, "trainer.max_epochs", f"must be >= 1, got {self.max_epochs}")
        _require(self.max_steps is None or self.max_steps >= 1, "trainer.max_steps",
                 f"must be >= 1 or null, got {self.max_steps}")
        _require(self.eval_every_n_steps is None or self.eval_every_n_steps >= 1, "trainer.eval_every_n_steps",
                 f"must be >= 1 or null, got {self.eval_every_n_steps}")
        _require(self.log_every_s >= 0, "trainer.log_every_s", f"must be >= 0, got {self.log_every_s}")
        _require(self.grad_clip is None or self.grad_clip > 0, "trainer.grad_clip",
                 f"must be > 0 or null, got {self.grad_clip}")
        _require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "trainer.device",
                 f"must be one of auto, cpu, cuda, cuda:N, mps; got {self.device!r}")


class WandbMode(str, Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class LoggerConfig:
    name: str = "csv"
    # W&B mirror settings; used only when name == "wandb". CSV and JSON are always written.
    mode: WandbMode = WandbMode.online
    project: str = "rnnrepro"
    entity: str | None = None
    group: str | None = None
    tags: list = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.name in ("csv", "wandb"), "logger.name", f"must be csv or wandb, got {self.name!r}")


@dataclass
class MetaConfig:
    """Identifies a run for aggregation: the experiment preset and the paper table row it reproduces."""

    experiment: str = "adhoc"
    paper: str | None = None
    table: str | None = None
    row: str | None = None
    tier: str | None = None  # smoke | full, set by scripts/reproduce_tables.py
    seeds: list = field(default_factory=lambda: [0, 1, 2])  # the seeds a paper table averages over


@dataclass
class Config:
    model: Any = MISSING
    data: Any = MISSING
    optimizer: Any = MISSING
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    seed: int = 0
    resume: str | None = None  # null | auto | path to last.pt or to a run directory
    output_dir: str | None = None  # null: Hydra's runtime output dir


SCHEMAS = {
    "model": {"rnn": RNNConfig, "irnn": IRNNConfig, "gru": GRUConfig, "lstm": LSTMConfig,
              "antisym": AntisymConfig, "sbo": SBOConfig, "rhn": RHNConfig},
    "data": {"mnist": MNISTDataConfig, "adding": AddingDataConfig, "copy_memory": CopyMemoryDataConfig,
             "ptb_word": PTBWordDataConfig, "music": MusicDataConfig,
             "atis": ATISDataConfig, "har2": HAR2DataConfig,
             "cifar": CIFARDataConfig, "noisy_cifar": NoisyCIFARDataConfig,
             "timit": TIMITDataConfig, "ptb_char": PTBCharDataConfig, "string_memo": StringMemoDataConfig},
    "optimizer": {"adam": AdamConfig, "sgd": SGDConfig, "adagrad": AdagradConfig, "rmsprop": RMSpropConfig},
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="rnnrepro_schema", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    cs.store(group="schema", name="scheduler", node=SchedulerConfig)
    cs.store(group="schema", name="trainer", node=TrainerConfig)
    cs.store(group="schema", name="logger", node=LoggerConfig)
    cs.store(group="schema", name="algorithm", node=AlgorithmConfig)


register_configs()


def validate(cfg: DictConfig) -> Config:
    """Instantiates the schemas (running every range check) and returns the typed config.

    Raises ConfigError naming the key and the fix; composition errors (unknown keys, wrong types, unknown enum
    values, unknown group options) are raised by Hydra itself before this point.
    """
    for key in ("model", "data", "optimizer"):
        node = cfg.get(key)
        if node is None or OmegaConf.get_type(node) is dict:
            raise ConfigError(f"{key}: the selected config is not backed by a schema; its YAML must start with a "
                              f"defaults entry such as '/schema/{key}/<name>@_here_'")
    _reject_unknown_keys(cfg, "")
    typed = OmegaConf.to_object(cfg)
    _check_algorithm_fits(typed)
    return typed


ONLINE_ALGORITHMS = ("rtrl", "uoro", "kf_rtrl", "ok")


def _check_algorithm_fits(cfg: Config) -> None:
    """Online algorithms need a parameter-free input encoder and (except exact RTRL) a Kronecker-structured cell."""
    if getattr(cfg.model, "tie_weights", False):
        embedding = getattr(cfg.data, "embedding_size", None)
        encoding = getattr(getattr(cfg.data, "input_encoding", None), "value", None)
        if embedding is None or encoding != "embedding":
            raise ConfigError(f"model.tie_weights=true needs a token dataset with an embedding; dataset "
                              f"{cfg.data.name} has none. Set model.tie_weights=false")
        if embedding != cfg.model.hidden_size:
            raise ConfigError(f"model.tie_weights=true shares the embedding ({embedding} wide) with the head (reads "
                              f"model.hidden_size={cfg.model.hidden_size}); set data.embedding_size="
                              f"{cfg.model.hidden_size}, or model.tie_weights=false")
    name = cfg.algorithm.name.value
    if name not in ONLINE_ALGORITHMS:
        return
    if cfg.model.num_layers > 1:
        raise ConfigError(f"algorithm={name} carries the influence of one recurrent layer; model.num_layers="
                          f"{cfg.model.num_layers}. Set model.num_layers=1, or algorithm=bptt / tbptt")
    encoding = getattr(cfg.data, "input_encoding", None)
    if encoding is not None and str(getattr(encoding, "value", encoding)) != "one_hot":
        raise ConfigError(f"algorithm={name}: data.input_encoding={getattr(encoding, 'value', encoding)} adds an "
                          "embedding that online algorithms do not track; set data.input_encoding=one_hot")
    if name != "rtrl":
        import hydra.utils

        from rnnrepro.cells.base import KroneckerCell

        cell = hydra.utils.get_class(cfg.model._target_)
        if not issubclass(cell, KroneckerCell):
            raise ConfigError(f"algorithm={name} needs a cell with a Kronecker form (h_hat, D, H); model="
                              f"{cfg.model.name} has none: use model=rhn or model=rnn, or algorithm=rtrl (any cell, "
                              "small n)")


def _reject_unknown_keys(node: Any, prefix: str) -> None:
    """Hydra's '+key=value' adds keys even to schema-backed nodes; a key the schema lacks is a typo."""
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        allowed = {f.name for f in dataclasses.fields(schema)}
        for key in node.keys():
            if key not in allowed:
                raise ConfigError(f"{prefix}{key}: unknown key; {prefix.rstrip('.') or 'the config'} accepts "
                                  f"{', '.join(sorted(k for k in allowed if not k.startswith('_')))}")
    for key in node.keys():
        _reject_unknown_keys(node._get_node(key), f"{prefix}{key}.")
