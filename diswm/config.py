"""The configuration's schema: frozen dataclasses, built from nested dicts and validated.

A nested dict becomes typed sections at once (`build_config`), so a wrong key, a wrong type or an
impossible value fails with a message that names it; configs saved by older versions are read
through `upgrade_saved`. Nothing here reads presets (diswm/presets.py layers them) or probes the
machine (diswm/machine.py checks that a new run fits it), so a saved ``config.yaml`` loads the
same everywhere::

    cfg = load_config(["debug"], ["train.steps=20000"])   # diswm.presets
    cfg.save(run_dir / "config.yaml")
    assert Config.load(run_dir / "config.yaml") == cfg
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diswm.priority import PRIORITIES


class ConfigError(ValueError):
    """A configuration key, type or value is invalid; the message names it (cut to a few hundred
    characters: a huge or malformed value must not flood the terminal)."""

    MAX_LEN = 3000  # room for the list of valid task ids; echoed values are cut by shorten

    def __init__(self, message: str):
        message = " ".join(line.strip() for line in message.splitlines() if line.strip())
        if len(message) > self.MAX_LEN:
            message = message[:self.MAX_LEN - 20] + " ... (cut short)"
        super().__init__(message)


def _choices(*values: str) -> dict:
    return {"choices": values}


def _range(ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> dict:
    return {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}


# ---------------------------------------------------------------------------------------------
# Sections. Each field's metadata carries its constraints; `validate()` adds cross-field checks.
# Numbers follow DESIGN.md section 1 (the authors' released settings with their bugs fixed).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvConfig:
    """The target task and how it is observed."""

    task: str = "dmc:cheetah_run"  # see `diswm envs list`
    size: int = field(default=64, metadata=_range(ge=16, le=512))  # square RGB frames
    action_repeat: int = field(default=2, metadata=_range(ge=1))  # rewards summed over the repeat
    # Episode length in env (control) steps; 0 uses the task's own (DMC 1000, Pusher 100).
    time_limit: int = field(default=0, metadata=_range(ge=0))
    # Scene quality: "full" (shadows + reflections, dm_control's default look), "no_shadows", or
    # "fast" (neither). Measured here: ~62 / ~185 / ~330 renders/s for cheetah at 64x64.
    render_quality: str = field(default="fast", metadata=_choices("full", "no_shadows", "fast"))
    camera: int = field(default=-1, metadata=_range(ge=-1))  # -1: the task's default camera
    # gym:<id> tasks: modules imported before the env is made (comma-separated), e.g. a user's
    # package that registers its Gymnasium envs (diswm/envs/gym.py).
    gym_import: str = ""


@dataclass(frozen=True)
class DistractionConfig:
    """Colour distractions (DESIGN.md section 1)."""

    enabled: bool = True
    scheme: str = field(default="A", metadata=_choices("A", "B"))  # scheme at the start of a run
    switch_to: str = field(default="B", metadata=_choices("A", "B"))
    # Fraction of the run's env steps after which every env switches to `switch_to` for good;
    # 1.0 never switches.
    switch_at: float = field(default=0.5, metadata=_range(gt=0.0, le=1.0))
    box: float = field(default=0.2, metadata=_range(ge=0.0, le=1.0))  # half-width around centre
    step_std: float = field(default=0.2, metadata=_range(ge=0.0))  # per-step drift (DMC)


@dataclass(frozen=True)
class ModelConfig:
    """World model sizes and loss scales."""

    # "beta_vae": DisWM's encoder/decoder with the 20-d z bottleneck; "conv": DreamerV2's conv
    # encoder (1024-d features, no bottleneck) and conv decoder (the DreamerV2 baselines).
    encoder: str = field(default="beta_vae", metadata=_choices("beta_vae", "conv"))
    z_dim: int = field(default=20, metadata=_range(ge=1))  # beta-VAE latent (teacher & student)
    cnn_depth: int = field(default=32, metadata=_range(ge=1))
    stoch: int = field(default=50, metadata=_range(ge=1))
    # RSSM latents: 0 = Gaussian with `stoch` dims (DisWM's and DESIGN.md's); K > 0 = `stoch`
    # categoricals of K classes each, one-hot with straight-through gradients (DreamerV2's
    # released default is 32 x 32). The same for every method, so comparisons stay fair.
    discrete: int = field(default=0, metadata=_range(ge=0))
    deter: int = field(default=200, metadata=_range(ge=1))
    hidden: int = field(default=200, metadata=_range(ge=1))
    units: int = field(default=400, metadata=_range(ge=1))
    reward_layers: int = field(default=2, metadata=_range(ge=1))
    discount_head: bool = False  # no discount head for DMC
    kl_scale: float = field(default=1.0, metadata=_range(ge=0.0))  # alpha
    kl_balance: float = field(default=0.8, metadata=_range(ge=0.0, le=1.0))
    kl_free: float = field(default=1.0, metadata=_range(ge=0.0))
    beta: float = field(default=0.015, metadata=_range(ge=0.0))  # KL[q(z|o) || N(0, I)]
    image_scale: float = field(default=1.0, metadata=_range(ge=0.0))
    reward_scale: float = field(default=2.0, metadata=_range(ge=0.0))
    discount_scale: float = field(default=1.0, metadata=_range(ge=0.0))  # with discount_head


@dataclass(frozen=True)
class DistillConfig:
    """Latent distillation from the frozen teacher: eta = eta_init * max(1 - t/decay, min_frac)."""

    enabled: bool = True
    teacher: str = ""  # path of the pretrained teacher checkpoint ("" = none)
    eta_init: float = field(default=0.1, metadata=_range(ge=0.0))
    eta_min_frac: float = field(default=0.1, metadata=_range(ge=0.0, le=1.0))  # 0.1 -> 0.01
    decay_steps: int = field(default=50_000, metadata=_range(gt=0))  # agent steps
    start_step: int = field(default=0, metadata=_range(ge=0))  # delayed start (Pusher: 50k)
    # "batchmean" (default): the released code's F.kl_div(..., reduction="batchmean") on
    # (B, T, Z), i.e. the per-step KL summed over time and averaged over the batch -- the weighting
    # the paper's eta was tuned with; "mean": averaged over batch x time (T times weaker).
    reduction: str = field(default="batchmean", metadata=_choices("batchmean", "mean"))
    # DV2-finetune baseline: initialise encoder, RSSM and decoder from the teacher checkpoint.
    finetune: bool = False
    # "replay" (default): the actors compute the frozen teacher's latent once per frame and store
    # it with the step (field z_teacher); "learner": the learner encodes every sampled frame
    # again (each frame ~100-500 times over a run). Same values (the teacher never changes).
    teacher_latents: str = field(default="replay", metadata=_choices("replay", "learner"))


@dataclass(frozen=True)
class BehaviourConfig:
    """DreamerV2 actor-critic trained in imagination."""

    horizon: int = field(default=15, metadata=_range(ge=1))
    discount: float = field(default=0.99, metadata=_range(gt=0.0, le=1.0))
    lambda_: float = field(default=0.95, metadata=_range(ge=0.0, le=1.0))
    actor_layers: int = field(default=4, metadata=_range(ge=1))
    critic_layers: int = field(default=4, metadata=_range(ge=1))
    actor_dist: str = field(default="trunc_normal", metadata=_choices("trunc_normal", "tanh_normal",
                                                                  "normal_released"))
    actor_grad: str = field(default="dynamics", metadata=_choices("dynamics", "reinforce"))
    actor_entropy: float = field(default=1e-4, metadata=_range(ge=0.0))
    slow_critic_update: int = field(default=100, metadata=_range(ge=1))
    # World-model-only updates before the actor and critic learn (0 = DreamerV2: from the first).
    warmup_updates: int = field(default=0, metadata=_range(ge=0))


@dataclass(frozen=True)
class OptimConfig:
    model_lr: float = field(default=3e-4, metadata=_range(gt=0.0))
    actor_lr: float = field(default=8e-5, metadata=_range(gt=0.0))
    critic_lr: float = field(default=8e-5, metadata=_range(gt=0.0))
    eps: float = field(default=1e-5, metadata=_range(gt=0.0))
    grad_clip: float = field(default=100.0, metadata=_range(gt=0.0))
    # "torch": PyTorch's Adam (the authors' port); "keras": TF/Keras Adam as danijar/dreamerv2
    # ran it, eps added to the uncorrected sqrt(v) (= PyTorch with eps / sqrt(1 - beta2^t);
    # diswm/models/optim.py).
    adam_eps: str = field(default="torch", metadata=_choices("torch", "keras"))
    # DreamerV2's decoupled weight decay: params *= (1 - weight_decay) every step (not times lr).
    weight_decay: float = field(default=0.0, metadata=_range(ge=0.0, lt=1.0))


@dataclass(frozen=True)
class TrainConfig:
    """Online training budget and schedule (env steps count control steps, as in the paper)."""

    seed: int = 0
    steps: int = field(default=1_000_000, metadata=_range(gt=0))  # env steps
    batch_size: int = field(default=50, metadata=_range(ge=1, le=4096))
    batch_length: int = field(default=50, metadata=_range(ge=2, le=1000))
    train_every: int = field(default=5, metadata=_range(ge=1))  # agent steps per update
    prefill: int = field(default=2500, metadata=_range(ge=0))  # agent steps before training
    pretrain_updates: int = field(default=100, metadata=_range(ge=0))
    eval_every: int = field(default=10_000, metadata=_range(gt=0))  # env steps
    eval_episodes: int = field(default=10, metadata=_range(ge=0))
    # With each evaluation, a video of its first episode beside the model's reconstruction
    # (videos/eval_<env steps>.mp4; diswm/video.py).
    eval_video: bool = True
    # Evaluation acts with the actor's mode; False samples z and the latent state as DreamerV2
    # does by default (its `eval_state_mean`), True takes their means.
    eval_state_mean: bool = False
    checkpoint_every: int = field(default=50_000, metadata=_range(gt=0))  # env steps
    # Checkpoints kept besides best.pt (the best evaluation's) and latest.pt (a link to the
    # newest); every evaluation also keeps the checkpoint of the weights it evaluated.
    keep_checkpoints: int = field(default=3, metadata=_range(ge=1))
    log_every: int = field(default=10, metadata=_range(gt=0))  # updates between train.csv rows
    progress_every: float = field(default=10.0, metadata=_range(gt=0.0))  # s between progress lines
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    # Compute dtype of matmuls and convolutions: "auto" = bf16 where the hardware has native
    # bf16 (AVX512-BF16/AMX CPUs, CUDA compute capability >= 8.0), fp32 elsewhere; fp16 is
    # CUDA-only (with a loss scaler). Weights, distributions, KLs and losses stay float32.
    precision: str = field(default="auto", metadata=_choices("auto", "fp32", "bf16", "fp16"))
    compile: bool = False  # torch.compile the hot paths (see diswm/models/compiled.py)
    # torch.compile's mode: "reduce-overhead" adds CUDA graphs (CUDA only; removes the per-kernel
    # launch cost that bounds small models on a GPU), "max-autotune-no-cudagraphs" tunes kernels.
    compile_mode: str = field(default="default", metadata=_choices(
        "default", "reduce-overhead", "max-autotune-no-cudagraphs"))
    channels_last: bool = True  # channels-last memory format in the conv stacks (measured faster)
    # CPU only: stride-2 (transposed) convs computed the way oneDNN is fast at (diswm/models/
    # fastconv.py; same functions and gradients); False = torch.nn's convolutions
    fast_convs: bool = True
    # Keep freed host memory in the process's heap for reuse (glibc: no mmap, no trim), so
    # large activations are not page-faulted and zeroed anew every update (diswm/hostmem.py)
    reuse_host_memory: bool = True


@dataclass(frozen=True)
class PretrainConfig:
    """Stage 1: the action-free beta-VAE video model on distracting videos."""

    source_task: str = "dmc:cheetah_run"
    frames: int = field(default=1_000_000, metadata=_range(gt=0))
    updates: int = field(default=20_000, metadata=_range(gt=0))
    batch_size: int = field(default=50, metadata=_range(ge=1, le=4096))
    batch_length: int = field(default=50, metadata=_range(ge=2))
    lr: float = field(default=3e-4, metadata=_range(gt=0.0))
    beta: float = field(default=0.015, metadata=_range(ge=0.0))  # beta_2
    seed: int = 0  # base seed: shard i of a collection uses a seed derived from (seed, i)
    episodes_per_shard: int = field(default=4, metadata=_range(ge=1))
    workers: int = field(default=2, metadata=_range(ge=0))  # Ray collection workers; 0 in-process
    compression: str = field(default="lz4", metadata=_choices("lz4", "zstd", "none"))  # shards
    checkpoint_every: int = field(default=1000, metadata=_range(gt=0))  # updates
    log_every: int = field(default=50, metadata=_range(gt=0))  # updates between progress lines


@dataclass(frozen=True)
class ReplayConfig:
    capacity: int = field(default=1_000_000, metadata=_range(gt=0, le=100_000_000))  # steps kept
    chunk_length: int = field(default=64, metadata=_range(ge=1))
    compression: str = field(default="lz4", metadata=_choices("lz4", "zstd", "none"))
    host: str = "127.0.0.1"
    port: int = field(default=0, metadata=_range(ge=0, le=65535))  # 0: pick a free port
    # Secrets never live in a config (configs are saved to config.yaml and into every
    # checkpoint): the Redis password comes from $DISWM_REDIS_PASSWORD, else this file, else
    # ("") one generated into the run folder (mode 0600).
    password_file: str = ""
    namespace: str = "default"
    # Samples-per-insert limiter (Reverb's SampleToInsertRatio). The ratio is the train ratio,
    # train.batch_size / train.train_every sequences per agent step; sampling starts once
    # train.prefill steps are stored. `tolerance` is the slack in agent steps either side.
    rate_limit: bool = True
    tolerance: int = field(default=1000, metadata=_range(ge=1))
    wait_timeout: float = field(default=120.0, metadata=_range(gt=0.0))  # seconds, then an error
    # Seconds every client keeps retrying (with backoff) while Redis is unreachable before the
    # role gives up (a Redis restart from its AOF takes seconds; the local default is supervised).
    outage_window: float = field(default=120.0, metadata=_range(gt=0.0, le=86400.0))
    selector: str = field(default="uniform", metadata=_choices("uniform", "recency"))
    prefetch: int = field(default=2, metadata=_range(ge=0))  # batches prepared ahead
    # "aof": append-only file, fsync per `fsync` (lose <= ~1 s on a crash); "snapshot": RDB at
    # checkpoints (lose what came after the last one); "none": in memory only.
    persistence: str = field(default="aof", metadata=_choices("aof", "snapshot", "none"))
    fsync: str = field(default="everysec", metadata=_choices("everysec", "always", "no"))
    # > 1: the replay is sharded over a Redis Cluster with this many masters (one shard each;
    # replay_service/redis_cluster.py): started locally, or the one at replay.host:replay.port.
    shards: int = field(default=1, metadata=_range(ge=1, le=1024))
    # Images are compressed in blocks of this many steps inside a chunk, so a sampled sequence
    # decodes only the blocks it covers (0: whole-chunk records, as before).
    block_steps: int = field(default=8, metadata=_range(ge=0, le=4096))
    # Threads that decompress and copy a sampled batch (lz4 and numpy release the GIL); 0: half
    # the machine's CPUs, 1 to 4 (the learner's torch threads need the rest).
    sample_threads: int = field(default=0, metadata=_range(ge=0, le=64))
    # Processes that sample batches for the learner into shared memory (replay_service/workers.py:
    # no GIL between them, so the fetch and decode scale with cores); 0: sample in the learner's
    # process, in a background thread. Each worker holds its own decoded-chunk cache.
    sample_workers: int = field(default=0, metadata=_range(ge=0, le=64))


@dataclass(frozen=True)
class RuntimeConfig:
    actors: int = field(default=4, metadata=_range(ge=0, le=10_000))
    envs_per_actor: int = field(default=1, metadata=_range(ge=1, le=64))  # ~85 MB per env
    learner_gpus: float = field(default=1.0, metadata=_range(ge=0.0))  # fractional GPUs share a card
    learner_cpus: int = field(default=2, metadata=_range(ge=1))  # torch threads of the learner
    ray_address: str = ""  # "" starts a local Ray
    # Address every process serves /metrics on (a free port each); set a reachable address on
    # multi-machine clusters so one Prometheus can scrape them all.
    metrics_host: str = "127.0.0.1"
    run_dir: str = "runs"
    # Where a run's files persist for every node (diswm/storage.py): a path every node mounts,
    # or an fsspec URI. "" writes the run folder directly (one machine, or a run folder every
    # node mounts at the same path). The learner then works in node-local scratch and pushes
    # its checkpoints and logs here; a learner Ray restarts on another node resumes from them.
    storage: str = ""
    # A role (actor, learner) that crashes this many times in a row with the same cause within
    # 10 minutes stops restarting and surfaces the error (cluster status, diswm run); before
    # that, each restart waits a backoff doubling from 1 s to 60 s.
    max_crash_restarts: int = field(default=5, metadata=_range(ge=1, le=1000))
    # Custom Ray resources every actor asks for, "NAME=AMOUNT[,NAME=AMOUNT]": "gpu_box=1" places
    # actors only on nodes started with `ray start --resources='{"gpu_box": N}'`.
    actor_resources: str = ""
    # Evaluate in a Ray actor of its own on a snapshot of the weights (the learner keeps
    # training); false evaluates inside the learner, which pauses for it.
    eval_actor: bool = True
    # CPU priority of the actors' env loops (diswm/priority.py): "idle" (Linux SCHED_IDLE) lets
    # a CPU learner's threads have the cores whenever they want them; "low" is niceness 19;
    # "normal" leaves them as they are. The evaluation actor stays at normal priority.
    background_priority: str = field(default="idle", metadata=_choices(*PRIORITIES))
    # torch.compile each actor's policy step (diswm/agent/policy.py): on a CPU the small
    # presets' policies spend most of a step in per-op dispatch (docs/bench/README.md, "Actors").
    policy_compile: bool = False

    def actor_resource_map(self) -> dict[str, float]:
        return parse_resources(self.actor_resources, "runtime.actor_resources")


@dataclass(frozen=True)
class LoggingConfig:
    # TensorBoard event files in <run>/tb: every train.csv and eval.csv column, the config, the
    # open-loop images and each evaluation's video (diswm/tracking.py); `diswm tensorboard RUN`.
    tensorboard: bool = True
    # Weights & Biases as well (the `wandb` package): the same scalars, images and videos.
    wandb: bool = False
    wandb_project: str = "diswm"
    wandb_entity: str = ""  # "" = the account's default
    # "offline" writes <run>/wandb for a later `wandb sync`; nothing goes over the network.
    wandb_mode: str = field(default="online", metadata=_choices("online", "offline"))


@dataclass(frozen=True)
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    distraction: DistractionConfig = field(default_factory=DistractionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self) -> Config:
        """Cross-field checks; field-level checks already ran while building. Nothing here
        depends on the machine that reads the config (`diswm.machine.check_fits` does)."""
        from diswm.envs import validate_task_id  # local: envs import this module

        for key, task in (("env.task", self.env.task), ("pretrain.source_task",
                                                        self.pretrain.source_task)):
            try:
                validate_task_id(task)
            except ValueError as err:
                raise ConfigError(f"{key}: {err}") from None
        if self.train.batch_length > self.replay.capacity:
            raise ConfigError(
                f"train.batch_length={self.train.batch_length} exceeds "
                f"replay.capacity={self.replay.capacity}")
        if self.replay.capacity < 2 * self.replay.chunk_length:
            raise ConfigError(
                f"replay.capacity={self.replay.capacity} must hold at least two chunks "
                f"(2 x replay.chunk_length={self.replay.chunk_length})")
        if self.replay.rate_limit and 2 * self.replay.tolerance * self.samples_per_insert < (
                self.train.batch_size * self.replay.shards):
            per_shard = (f" over replay.shards={self.replay.shards} (each shard's limiter has "
                         "1/shards of it)" if self.replay.shards > 1 else "")
            raise ConfigError(
                f"replay.tolerance={self.replay.tolerance} agent steps is too small for "
                f"train.batch_size={self.train.batch_size} at {self.samples_per_insert:g} "
                f"samples per insert{per_shard}; the limiter could stall both sides")
        if self.replay.capacity < 2 * self.replay.chunk_length * self.replay.shards:
            raise ConfigError(
                f"replay.capacity={self.replay.capacity} must hold at least two chunks per shard "
                f"(2 x replay.chunk_length x replay.shards={self.replay.shards})")
        if self.model.encoder == "conv" and self.distill.enabled:
            raise ConfigError(
                "distill.enabled=true needs model.encoder=beta_vae (teacher and student share "
                "the 20-d z); DreamerV2's conv encoder has none: set distill.enabled=false")
        self.runtime.actor_resource_map()  # refuses a malformed value by name
        return self

    @property
    def samples_per_insert(self) -> float:
        """Sampled sequences per inserted agent step: the train ratio the limiter enforces."""
        return self.train.batch_size / self.train.train_every

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        from diswm.atomic import atomic_write

        return atomic_write(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a resolved config written by `save` (nothing else is merged in)."""
        return build_config(read_yaml(Path(path)))


# ---------------------------------------------------------------------------------------------
# Building from nested dicts, with type coercion and field-level checks.
# ---------------------------------------------------------------------------------------------


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` as `annotation` (bool, int, float, str), or raise naming `key`."""
    tp = annotation if isinstance(annotation, type) else None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}: expected true or false, got {shorten(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {shorten(value)}")
        if isinstance(value, int):
            return value
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {shorten(value)}") from None
        if as_float.is_integer():
            return int(as_float)
        raise ConfigError(f"{key}: expected an integer, got {shorten(value)}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {shorten(value)}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {shorten(value)}") from None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {shorten(value)}")
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def _check_field(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"{key}: {shorten(value)} is not allowed; choose one of {allowed}")
    bounds = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
              "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}
    for name, (sign, ok) in bounds.items():
        if name in meta and not ok(value, meta[name]):
            raise ConfigError(f"{key}: {shorten(value)} is out of range; it must be {sign} {meta[name]}")


def _build_section(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {shorten(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}.{unknown[0]}; valid keys in {prefix!r}: "
            + ", ".join(sorted(fields)))
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}"
        coerced = _coerce(key, value, hints[name])
        _check_field(key, coerced, fields[name].metadata)
        kwargs[name] = coerced
    return cls(**kwargs)


SECRET_IN_CONFIG = ("replay.password: secrets are not read from configs (a config is saved to "
                     "config.yaml and into every checkpoint); put the password in a file and set "
                     "replay.password_file=PATH, or export DISWM_REDIS_PASSWORD")


def upgrade_saved(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Read configs saved before a key was renamed or removed: `train.amp` (bool) became
    `train.precision` (amp false = fp32, as those runs computed; true = bf16); an empty
    `replay.password` (saved by older runs) is dropped, a set one refused (secrets come from a
    file or the environment)."""
    replay = data.get("replay") if isinstance(data, Mapping) else None
    if isinstance(replay, Mapping) and "password" in replay:
        if replay["password"]:
            raise ConfigError(SECRET_IN_CONFIG)
        data = {**data, "replay": {k: v for k, v in replay.items() if k != "password"}}
    train = data.get("train") if isinstance(data, Mapping) else None
    if not isinstance(train, Mapping) or "amp" not in train:
        return data
    train = dict(train)
    amp = train.pop("amp")
    if "precision" not in train:
        train["precision"] = "bf16" if _coerce("train.amp", amp, bool) else "fp32"
    return {**data, "train": train}


def build_config(data: Mapping[str, Any]) -> Config:
    """Nested dict -> validated `Config` (missing keys take their defaults)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    data = upgrade_saved(data)
    sections = {f.name: f for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(
            f"unknown config section {unknown[0]!r}; valid sections: " + ", ".join(sections))
    built = {name: _build_section(hints[name], value or {}, name) for name, value in data.items()}
    return Config(**built).validate()


# ---------------------------------------------------------------------------------------------
# Reading YAML, and the helpers the presets (diswm/presets.py) share.
# ---------------------------------------------------------------------------------------------


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: the problem and where it is."""
    problem = getattr(err, "problem", None) or type(err).__name__
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def shorten(value: object, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters (a huge value must not flood the error)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def parse_resources(text: str, key: str) -> dict[str, float]:
    """"a=1,b=0.5" -> {"a": 1.0, "b": 0.5}; ConfigError naming `key` on anything else."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, amount = part.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or value <= 0 or name.strip() in ("CPU", "GPU", "memory"):
            raise ConfigError(f"{key}: {shorten(part)} must look like NAME=AMOUNT with a custom "
                              "resource name and a positive amount, e.g. node2=1")
        out[name.strip()] = value
    return out


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; refuse anything near a megabyte


def read_yaml(path: Path) -> dict:
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {size / 2**20:.1f} MiB; a config is a few "
                              "KB (is it the right file?)")
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def replace(cfg: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy of `cfg` with some keys changed, validated like everything else.

    `replace(cfg, train={"steps": 10})`
    """
    return build_config(deep_merge(cfg.to_dict(), sections))


__all__ = [
    "BehaviourConfig", "Config", "ConfigError", "DistillConfig", "DistractionConfig", "EnvConfig",
    "ModelConfig", "OptimConfig", "PretrainConfig", "ReplayConfig", "RuntimeConfig",
    "TrainConfig", "build_config", "deep_merge", "replace",
]
