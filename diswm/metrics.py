"""Prometheus metrics, all named here (DESIGN.md section 3): names start with `diswm_`, use base
units, counters end in `_total`, labels have bounded cardinality (namespace = one per run)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)
_FETCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# -- replay -------------------------------------------------------------------------------------
REPLAY_INSERTED_STEPS = Counter(
    "diswm_replay_inserted_steps_total", "Agent steps inserted into the replay", ["namespace"])
REPLAY_INSERTED_CHUNKS = Counter(
    "diswm_replay_inserted_chunks_total", "Chunks inserted into the replay", ["namespace"])
REPLAY_INSERTED_BYTES = Counter(
    "diswm_replay_inserted_bytes_total", "Compressed bytes inserted into the replay",
    ["namespace"])
REPLAY_SAMPLED_SEQUENCES = Counter(
    "diswm_replay_sampled_sequences_total", "Sequences sampled from the replay", ["namespace"])
REPLAY_SIZE_STEPS = Gauge(
    "diswm_replay_size_steps", "Agent steps stored in the replay", ["namespace"])
REPLAY_SIZE_BYTES = Gauge(
    "diswm_replay_size_bytes", "Compressed bytes stored in the replay", ["namespace"])
REPLAY_COMPRESSION_RATIO = Gauge(
    "diswm_replay_compression_ratio", "Raw bytes / stored bytes of the replay's contents",
    ["namespace"])
REPLAY_INSERT_WAIT = Histogram(
    "diswm_replay_insert_wait_seconds", "Time an insert waited on the rate limiter",
    ["namespace"], buckets=_WAIT_BUCKETS)
REPLAY_SAMPLE_WAIT = Histogram(
    "diswm_replay_sample_wait_seconds",
    "Time a sample waited on the rate limiter or the minimum size", ["namespace"],
    buckets=_WAIT_BUCKETS)
REPLAY_SAMPLE_DURATION = Histogram(
    "diswm_replay_sample_duration_seconds", "Time to fetch, decode and assemble one batch",
    ["namespace"], buckets=_FETCH_BUCKETS)
REPLAY_CORRUPT_RECORDS = Counter(
    "diswm_replay_corrupt_records_total",
    "Stored records skipped because they failed to decode or check", ["namespace"])
REPLAY_SAMPLER_RESTARTS = Counter(
    "diswm_replay_sampler_restarts_total",
    "Sampler processes (replay.sample_workers) that died and were started again", ["namespace"])
REPLAY_SHARDS_UNREACHABLE = Gauge(
    "diswm_replay_shards_unreachable",
    "Replay shards (Redis Cluster nodes) the learner's sampler cannot reach now", ["namespace"])
REPLAY_REJECTED_STEPS = Counter(
    "diswm_replay_rejected_steps_total", "Steps refused at insert for a bad field or schema",
    ["namespace"])

# -- actors (label `actor`: the actor index, bounded by the cluster size) ------------------------
_RETURN_BUCKETS = (-200, -100, -50, -25, 0, 10, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800,
                   900, 1000)
ACTOR_ENV_STEPS = Counter(
    "diswm_actor_env_steps_total", "Env (control) steps taken by an actor", ["actor"])
ACTOR_AGENT_STEPS = Counter(
    "diswm_actor_agent_steps_total", "Agent steps (policy decisions) taken by an actor", ["actor"])
ACTOR_EPISODES = Counter(
    "diswm_actor_episodes_total", "Episodes finished by an actor", ["actor"])
ACTOR_EPISODE_RETURN = Histogram(
    "diswm_actor_episode_return", "Return of the episodes an actor finished", ["actor"],
    buckets=_RETURN_BUCKETS)
ACTOR_LAST_RETURN = Gauge(
    "diswm_actor_last_episode_return", "Return of the actor's latest episode", ["actor"])
ACTOR_POLICY_VERSION = Gauge(
    "diswm_actor_policy_version", "Policy version the actor acts with", ["actor"])
ACTOR_POLICY_LAG = Gauge(
    "diswm_actor_policy_lag", "Published policy version minus the one the actor acts with",
    ["actor"])
ACTOR_WEIGHT_FETCH = Histogram(
    "diswm_actor_weight_fetch_seconds", "Time to fetch and load new policy weights", ["actor"],
    buckets=_FETCH_BUCKETS)
ACTOR_RESTARTS = Counter(
    "diswm_actor_restarts_total", "Times Ray restarted this actor after it died", ["actor"])
ACTOR_WEIGHTS_REJECTED = Counter(
    "diswm_actor_weights_rejected_total",
    "Published weights records an actor refused (failed their checks); it kept its weights",
    ["actor"])
ACTOR_INSERT_TIMEOUTS = Counter(
    "diswm_actor_insert_timeouts_total",
    "Replay inserts that timed out on the rate limiter (the chunk is held and retried)", ["actor"])
ACTOR_STEP_DURATION = Histogram(
    "diswm_actor_step_duration_seconds", "Time of one batched step over the actor's envs",
    ["actor"], buckets=_FETCH_BUCKETS)

# -- learner (label `namespace`: one per run) -----------------------------------------------------
LEARNER_UPDATES = Counter(
    "diswm_learner_updates_total", "Gradient updates of the learner", ["namespace"])
LEARNER_SKIPPED_UPDATES = Counter(
    "diswm_learner_skipped_updates_total",
    "Learner updates (or their actor-critic step) skipped: loss or gradients not finite",
    ["namespace"])
LEARNER_UPDATE_DURATION = Histogram(
    "diswm_learner_update_duration_seconds", "Time of one learner update", ["namespace"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
LEARNER_POLICY_VERSION = Gauge(
    "diswm_learner_policy_version", "Latest policy version the learner published", ["namespace"])
LEARNER_POLICY_LAG = Histogram(
    "diswm_learner_policy_lag", "Learner version minus the version that generated trained data",
    ["namespace"], buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
LEARNER_BROADCAST = Histogram(
    "diswm_learner_weight_broadcast_seconds", "Time to publish a new policy version",
    ["namespace"], buckets=_FETCH_BUCKETS)
LEARNER_ENV_STEPS = Gauge(
    "diswm_learner_env_steps", "Env steps of the whole run, as the learner sees them",
    ["namespace"])
LEARNER_EVAL_RETURN = Gauge(
    "diswm_learner_eval_return", "Mean return of the latest evaluation", ["namespace"])
LEARNER_OPENLOOP_IMAGE_MSE = Gauge(
    "diswm_learner_openloop_image_mse",
    "World model's open-loop image MSE ([0, 1] pixels) on the latest evaluation's episode",
    ["namespace"])
LEARNER_OPENLOOP_REWARD_ERROR = Gauge(
    "diswm_learner_openloop_reward_abs_error",
    "World model's open-loop mean absolute reward error on the latest evaluation's episode",
    ["namespace"])

# The learning signals of the latest update (train.csv's columns, on every update).
LEARNER_MODEL_LOSS = Gauge("diswm_learner_model_loss", "World-model loss (total)", ["namespace"])
LEARNER_IMAGE_LOSS = Gauge("diswm_learner_image_loss", "Image reconstruction NLL", ["namespace"])
LEARNER_REWARD_LOSS = Gauge("diswm_learner_reward_loss", "Reward NLL", ["namespace"])
LEARNER_KL = Gauge("diswm_learner_kl", "KL between posterior and prior (nats)", ["namespace"])
LEARNER_ACTOR_LOSS = Gauge("diswm_learner_actor_loss", "Actor loss", ["namespace"])
LEARNER_CRITIC_LOSS = Gauge("diswm_learner_critic_loss", "Critic loss", ["namespace"])
LEARNER_ACTOR_ENTROPY = Gauge("diswm_learner_actor_entropy", "Actor entropy in imagination",
                              ["namespace"])
LEARNER_DISTILL_ETA = Gauge("diswm_learner_distill_eta",
                            "Distillation weight eta (0 without a teacher)", ["namespace"])
#: train.csv column -> its gauge
LEARNING = {"model_loss": LEARNER_MODEL_LOSS, "model/image": LEARNER_IMAGE_LOSS,
            "model/reward": LEARNER_REWARD_LOSS, "kl_value": LEARNER_KL,
            "actor_loss": LEARNER_ACTOR_LOSS, "critic_loss": LEARNER_CRITIC_LOSS,
            "actor_entropy": LEARNER_ACTOR_ENTROPY, "eta": LEARNER_DISTILL_ETA}
