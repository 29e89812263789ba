#!/usr/bin/env bash
# The GPU learning run of issue 11, as sent to a lent GPU machine (one call of the device tool).
# DreamerV2 (its conv encoder/decoder, DreamerV2's default sizes and 50 x 50 batches) on
# dmc:cartpole_swingup without distraction, 2 seeds side by side on one GPU, serial runner
# (env, in-process replay, learner in one process each: the device has no Ray), each stopped
# after DUR seconds. Results land in $OUT/gpu-runs.tar.gz (train/eval CSVs, open-loop images,
# the random-policy reference measured by the same command, logs, nvidia-smi samples).
#
# Carried: .whl/site312.tar.xz (mujoco 3.17.0, dm_control 1.0.50 without its locomotion and
# dog assets, dm-env, dm-tree, PyOpenGL, glfw, websockets, redis, hiredis, lz4 for Python 3.12) and .gl/*.deb
# (the GL/EGL loaders), as /work/.library/device/README.md says; `scripts/device_bundle.sh`
# builds both from setup.cfg's pins.
#
#   LOCAL=1 DEVICE=cpu DUR=60 EXTRA="..." OUT=/tmp/out bash gpu_run.sh   # a dry run here
set -u
DUR=${DUR:-470}
DEVICE=${DEVICE:-cuda}
SEEDS=${SEEDS:-"0 1"}
EXTRA=${EXTRA:-}
PRESETS=${PRESETS:-"finger_spin_to_cartpole_swingup dreamerv2"}
RUNS=/tmp/gpu-runs
rm -rf "$RUNS" && mkdir -p "$RUNS"
if [ -z "${LOCAL:-}" ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site312.tar.xz || exit 3
  export PYTHONPATH=/tmp/site:$PWD
  PY=python3
else
  export PYTHONPATH=$PWD
  PY=${PY:-python}
fi
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${THREADS:-4}
git rev-parse --short HEAD 2>/dev/null | tee "$RUNS/commit.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | tee "$RUNS/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$RUNS/gpu.txt"

smoke() {
  $PY - <<'EOF'
import sys, numpy as np
sys.modules["ray"] = None  # the device has no Ray; the serial runner must not need it
from diswm.presets import load_config
from diswm.envs import make_env
cfg = load_config(["finger_spin_to_cartpole_swingup", "dreamerv2"], ["distraction.enabled=false"])
with make_env(cfg.env, cfg.distraction, seed=0) as env:
    obs = env.reset()
    obs = env.step(np.zeros(env.act_space.shape, np.float32))
    print("smoke: image", obs["image"].shape, "mean", float(obs["image"].mean()))
EOF
}
if ! smoke 2>"$RUNS/smoke.err"; then
  echo "smoke failed; retrying with the NVIDIA EGL vendor file"; tail -3 "$RUNS/smoke.err"
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  if ! smoke 2>>"$RUNS/smoke.err"; then
    echo "no rendering here: measuring the learner instead"; tail -5 "$RUNS/smoke.err"
    timeout 400 $PY -m ops bench learner --sizes defaults --modes eager bf16_compile \
      --rounds 2 --updates 5 --json "$OUT/learner-bench.json" 2>&1 | tail -20
    tar -czf "$OUT/gpu-runs.tar.gz" -C /tmp gpu-runs
    exit 4
  fi
fi

( while sleep 30; do nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used \
    --format=csv,noheader 2>/dev/null; done ) >"$RUNS/nvidia-smi.csv" &
MON=$!
for s in $SEEDS; do
  # shellcheck disable=SC2086
  timeout -s INT "$DUR" $PY -m ops train --serial \
    --config $PRESETS \
    --set distraction.enabled=false train.seed="$s" train.device="$DEVICE" \
          train.precision=fp32 train.eval_every=4000 train.eval_episodes=4 $EXTRA \
    --run-dir "$RUNS/seed$s" >"$RUNS/seed$s.log" 2>&1 &
done
wait $(jobs -p | grep -v "^$MON$") 2>/dev/null
kill $MON 2>/dev/null
for s in $SEEDS; do
  echo "== seed $s"; grep -E "random policy|eval at" "$RUNS/seed$s.log"; tail -2 "$RUNS/seed$s.log"
  tail -1 "$RUNS/seed$s/train.csv" 2>/dev/null
done
rm -rf "$RUNS"/seed*/checkpoints
tar -czf "$OUT/gpu-runs.tar.gz" -C /tmp gpu-runs
ls -la "$OUT"
