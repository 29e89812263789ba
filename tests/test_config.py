"""Configuration: presets, overrides, validation errors that name the key, round trips."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from diswm.config import Config, ConfigError, TrainConfig, build_config, replace
from diswm.presets import load_config, preset_names, read_presets, resolve_layers
from ops.cli import main

TRANSFER_PRESETS = {
    "cheetah_run_to_walker_walk": ("dmc:cheetah_run", "dmc:walker_walk"),
    "reacher_easy_to_cheetah_run": ("dmc:reacher_easy", "dmc:cheetah_run"),
    "cheetah_run_to_hopper_stand": ("dmc:cheetah_run", "dmc:hopper_stand"),
    "finger_spin_to_reacher_easy": ("dmc:finger_spin", "dmc:reacher_easy"),
    "finger_spin_to_cartpole_swingup": ("dmc:finger_spin", "dmc:cartpole_swingup"),
    "reacher_easy_to_pusher": ("dmc:reacher_easy", "mujoco:pusher"),
}


def test_yaml_defaults_match_dataclass_defaults():
    """The YAML `defaults` block lists every key, with the dataclasses' values."""
    yaml_defaults = read_presets()["defaults"]
    code_defaults = Config().to_dict()
    assert set(yaml_defaults) == set(code_defaults)
    for section, values in code_defaults.items():
        assert set(yaml_defaults[section]) == set(values), section
        for key, value in values.items():
            assert yaml_defaults[section][key] == value, f"{section}.{key}"
    assert load_config() == Config()


def test_design_numbers_in_defaults():
    cfg = load_config()
    assert (cfg.model.z_dim, cfg.model.stoch, cfg.model.deter, cfg.model.hidden) == (20, 50, 200, 200)
    assert (cfg.model.kl_balance, cfg.model.kl_free, cfg.model.beta) == (0.8, 1.0, 0.015)
    assert (cfg.train.batch_size, cfg.train.batch_length, cfg.train.train_every) == (50, 50, 5)
    assert (cfg.optim.model_lr, cfg.optim.actor_lr, cfg.optim.eps) == (3e-4, 8e-5, 1e-5)
    assert (cfg.env.size, cfg.env.action_repeat) == (64, 2)
    assert (cfg.distraction.box, cfg.distraction.step_std, cfg.distraction.switch_at) == (0.2, 0.2, 0.5)


def test_every_preset_resolves_and_validates():
    for name in preset_names():
        assert isinstance(load_config([name]), Config), name
        assert isinstance(load_config(["debug", name]), Config), name


@pytest.mark.parametrize("name,tasks", sorted(TRANSFER_PRESETS.items()))
def test_transfer_presets(name, tasks):
    cfg = load_config([name])
    assert (cfg.pretrain.source_task, cfg.env.task) == tasks


def test_pusher_preset_delays_distillation():
    cfg = load_config(["reacher_easy_to_pusher"])
    assert (cfg.distill.start_step, cfg.distill.decay_steps) == (50_000, 50_000)


def test_presets_apply_in_order_then_overrides():
    assert load_config(["debug"]).train.steps == 20_000
    assert load_config(["debug", "tiny"]).train.steps == 400
    assert load_config(["tiny", "debug"]).train.steps == 20_000
    cfg = load_config(["debug"], ["train.steps=123", "env.task=dmc:walker_walk"])
    assert cfg.train.steps == 123 and cfg.env.task == "dmc:walker_walk"
    # Nested merge keeps the keys a preset does not mention.
    assert load_config(["debug"]).model.z_dim == 20


def test_configs_saved_before_precision_read_back_as_they_ran(tmp_path):
    """Runs saved with the old `train.amp` key resume with the precision they computed in."""
    for amp, precision in ((False, "fp32"), (True, "bf16")):
        data = load_config([]).to_dict()
        data["train"].pop("precision")
        data["train"]["amp"] = amp
        path = tmp_path / f"old-{amp}.yaml"
        path.write_text(yaml.safe_dump(data))
        assert Config.load(path).train.precision == precision
        assert load_config([str(path)]).train.precision == precision


def test_override_coercion():
    cfg = load_config([], ["train.steps=1e5", "optim.model_lr=1e-3", "train.compile=true",
                           "replay.namespace=12345"])
    assert cfg.train.steps == 100_000 and isinstance(cfg.train.steps, int)
    assert cfg.optim.model_lr == 1e-3
    assert cfg.train.compile is True
    assert cfg.replay.namespace == "12345"


def test_secrets_are_never_taken_from_or_written_into_configs(tmp_path):
    """A password given in a config ended up in config.yaml (mode 0644) and in every checkpoint:
    it is refused, pointing at the file / environment variable; old saved configs with an empty
    password still load."""
    with pytest.raises(ConfigError, match="replay.password_file=PATH, or export "
                                          "DISWM_REDIS_PASSWORD"):
        load_config([], ["replay.password=hunter2"])
    secret = tmp_path / "secret.yaml"
    secret.write_text("replay: {password: hunter2}\n")
    with pytest.raises(ConfigError, match="secrets are not read from configs"):
        load_config([str(secret)])
    old = Config().to_dict()
    old["replay"]["password"] = ""
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    assert Config.load(path).replay.password_file == ""
    assert "password" not in yaml.safe_dump(load_config([], ["replay.password_file=/x"])
                                            .to_dict()).replace("password_file", "")


@pytest.mark.parametrize("override,needle", [
    ("train.stepz=3", "unknown config key train.stepz; valid keys in 'train': batch_length"),
    ("trian.steps=3", "unknown config section 'trian'"),
    ("train.steps=abc", "train.steps: expected an integer, got 'abc'"),
    ("train.steps=1.5", "train.steps: expected an integer"),
    ("train.steps=0", "train.steps: 0 is out of range; it must be > 0"),
    ("train.compile=maybe", "train.compile: expected true or false"),
    ("train.precision=fp8", "train.precision: 'fp8' is not allowed; choose one of 'auto', "
                            "'fp32', 'bf16', 'fp16'"),
    ("train.amp=true", "train.amp was replaced by train.precision"),
    ("model.kl_balance=2", "model.kl_balance: 2.0 is out of range; it must be <= 1.0"),
    ("env.render_quality=ultra", "env.render_quality: 'ultra' is not allowed; choose one of "
                                 "'full', 'no_shadows', 'fast'"),
    ("distraction.scheme=C", "distraction.scheme: 'C' is not allowed; choose one of 'A', 'B'"),
    ("env.task=dmc:cheetah_walk", "env.task: unknown task 'dmc:cheetah_walk'; valid tasks:"),
    ("pretrain.source_task=pusher", "pretrain.source_task: unknown task 'pusher'"),
    ("steps=3", "must be section.key"),
    ("train.steps", "must look like section.key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    assert needle in str(err.value)


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config([], ["env.task=dmc:nope"])
    assert "dmc:cheetah_run" in str(err.value) and "mujoco:pusher" in str(err.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as err:
        load_config(["nope"])
    assert "unknown preset 'nope'" in str(err.value) and "debug" in str(err.value)


def test_save_and_load_round_trip(tmp_path):
    cfg = load_config(["debug", "reacher_easy_to_pusher"], ["optim.model_lr=1.23e-4"])
    path = cfg.save(tmp_path / "run" / "config.yaml")
    assert Config.load(path) == cfg
    # A saved config also works as a preset layer.
    assert load_config([str(path)]) == cfg


def test_bad_yaml_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config([str(bad)])
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config([str(tmp_path / "missing.yaml")])


def test_config_is_frozen_and_replace_validates():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 5  # type: ignore[misc]
    assert replace(cfg, train={"steps": 7}).train.steps == 7
    with pytest.raises(ConfigError, match="train.steps"):
        replace(cfg, train={"steps": -1})


def test_build_config_rejects_non_mapping_section():
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        build_config({"train": 5})


def test_resolve_layers_does_not_mutate_presets():
    before = read_presets()["debug"]["train"]["steps"]
    resolve_layers(["debug"], ["train.steps=9"])
    assert read_presets()["debug"]["train"]["steps"] == before


def test_cli_reports_bad_key(capsys):
    assert main(["config", "show", "--set", "train.stepz=1"]) == 2
    err = capsys.readouterr().err
    assert "diswm: error: unknown config key train.stepz" in err


def test_cli_config_show_prints_resolved_yaml(capsys):
    assert main(["config", "show", "--config", "tiny", "--set", "train.seed=7"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and "steps: 400" in out


def test_a_host_without_dm_control_validates_the_paper_tasks(monkeypatch):
    """A learner-only host (a GPU node without MuJoCo) still loads configs: the paper's tasks
    are valid there, anything else is refused by name."""
    import diswm.envs as envs
    import diswm.envs.dmc as dmc

    def missing():
        raise ImportError("No module named 'dm_control'")

    monkeypatch.setattr(dmc, "dmc_tasks", missing)
    envs.list_tasks.cache_clear()
    try:
        assert envs.list_tasks() == envs.PAPER_TASKS
        assert load_config([], ["env.task=dmc:finger_spin"]).env.task == "dmc:finger_spin"
        with pytest.raises(ValueError, match="dmc:acrobot_swingup"):
            load_config([], ["env.task=dmc:acrobot_swingup"])
    finally:
        envs.list_tasks.cache_clear()


@pytest.mark.parametrize("overrides, key", [
    (["runtime.envs_per_actor=100000"], "runtime.envs_per_actor"),
    (["train.batch_size=1000000000"], "train.batch_size"),
    (["train.batch_size=4096", "train.batch_length=1000"], "train.batch_size"),
    (["replay.capacity=1000000000000"], "replay.capacity"),
    (["runtime.actors=2000", "runtime.envs_per_actor=64"], "runtime.actors"),
])
def test_configs_that_cannot_fit_the_machine_are_refused_by_name(overrides, key):
    """Before: envs_per_actor=100000 was accepted (85 MB per env) and a serial run with
    batch_size=1e9 hung while its memory grew."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([], overrides)


def test_a_huge_malformed_config_file_gives_a_short_error(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text("train: {steps: [" + "x, " * 200_000 + "\n")  # 600 KB, unterminated
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * 200_000)  # 2 MB
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  steps: " + "9" * 100_000 + "x\n")
    for path in (big, huge, wrong):
        assert main(["config", "show", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("diswm: error: ") and err.count("\n") == 1, err[:200]
        assert len(err) < 500, (path.name, len(err))


# danijar/dreamerv2 configs.yaml, `defaults` merged with `dmc_vision`, transcribed value by value
# (the configuration of its published DMC-vision scores), keyed by our settings. Its counts are
# agent steps (prefill, train_every); ours are too.
DREAMERV2_DMC_VISION = {
    "env.action_repeat": 2, "env.size": 64, "env.time_limit": 0, "env.camera": -1,
    "env.render_quality": "full",                     # dm_control's default scene
    "distraction.enabled": False,                     # clean DMC
    "model.encoder": "conv", "model.beta": 0.0,       # encoder/decoder: its conv stacks
    "model.cnn_depth": 48,                            # encoder.cnn_depth, decoder.cnn_depth
    "model.stoch": 32, "model.discrete": 32,          # rssm.stoch, rssm.discrete
    "model.deter": 200, "model.hidden": 200,          # dmc_vision: rssm {hidden: 200, deter: 200}
    "model.units": 400, "model.reward_layers": 4,     # reward_head {layers: 4, units: 400}
    "model.discount_head": False,                     # pred_discount: False
    "model.kl_scale": 1.0, "model.reward_scale": 1.0, "model.image_scale": 1.0,  # loss_scales
    "model.kl_balance": 0.8, "model.kl_free": 1.0,    # kl {balance: 0.8}, dmc_vision kl.free 1.0
    "behaviour.horizon": 15, "behaviour.discount": 0.99, "behaviour.lambda_": 0.95,
    "behaviour.actor_layers": 4, "behaviour.critic_layers": 4,
    "behaviour.actor_dist": "trunc_normal",           # actor.dist auto -> continuous actions
    "behaviour.actor_grad": "dynamics",               # actor_grad auto -> continuous actions
    "behaviour.actor_entropy": 1e-4,                  # dmc_vision actor_ent
    "behaviour.slow_critic_update": 100,              # slow_target_update, fraction 1
    "optim.model_lr": 3e-4, "optim.actor_lr": 8e-5, "optim.critic_lr": 8e-5,
    "optim.eps": 1e-5, "optim.grad_clip": 100.0, "optim.weight_decay": 1e-6,
    "optim.adam_eps": "keras",                        # tf.optimizers.Adam
    "train.batch_size": 16, "train.batch_length": 50,  # dataset {batch: 16, length: 50}
    "train.train_every": 5, "train.prefill": 1000, "train.pretrain_updates": 100,
    "distill.enabled": False, "distill.finetune": False,
}


@pytest.mark.parametrize("key", sorted(DREAMERV2_DMC_VISION))
def test_dreamerv2_repro_is_danijars_dmc_vision(key):
    section, name = key.split(".")
    cfg = load_config(["dreamerv2_repro"]).to_dict()
    assert cfg[section][name] == DREAMERV2_DMC_VISION[key], key


def test_dreamerv2_repro_acts_nearly_synchronously():
    """DreamerV2's policy acts with every update so far; ours lags by at most the limiter's
    slack: 100 agent steps = 20 updates at one update every 5."""
    cfg = load_config(["dreamerv2_repro", "repro_cpu"])
    assert cfg.replay.tolerance // cfg.train.train_every == 20


def test_dreamerv2_repro_keeps_the_papers_baseline_apart():
    paper = load_config(["dreamerv2"])
    assert (paper.train.batch_size, paper.model.discrete, paper.model.reward_scale,
            paper.optim.adam_eps) == (50, 0, 2.0, "torch")


def test_repro_cpu_cuts_sizes_only():
    """The CPU budget of the reproduction changes sizes and the schedule, never the batch, the
    train ratio, the losses or the optimizer."""
    full = load_config(["dreamerv2_repro"]).to_dict()
    cut = load_config(["dreamerv2_repro", "repro_cpu"]).to_dict()
    changed = {f"{s}.{k}" for s in full for k in full[s] if full[s][k] != cut[s][k]}
    assert changed == {"model.cnn_depth", "model.stoch", "model.discrete", "model.deter",
                       "model.hidden", "model.units", "train.steps", "train.eval_every",
                       "train.eval_episodes", "train.checkpoint_every", "train.compile",
                       "replay.capacity", "runtime.actors"}


def test_a_saved_config_loads_on_a_machine_that_could_not_run_it(tmp_path):
    """A run folder's config.yaml reads the same everywhere: a config saved on a CUDA host
    (or one with more memory) loads here; starting a run from it is what gets refused."""
    saved = tmp_path / "config.yaml"
    Config(train=TrainConfig(device="cuda")).save(saved)
    cfg = Config.load(saved)
    assert cfg.train.device == "cuda"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train\.device='cuda'"):
            load_config([str(saved)])
    huge = replace(Config(), runtime={"actors": 2000, "envs_per_actor": 64})  # ~10 TB of envs
    huge.save(saved)
    assert Config.load(saved).runtime.actors == 2000
    with pytest.raises(ConfigError, match=r"runtime\.actors"):
        load_config([str(saved)])
