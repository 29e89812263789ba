#!/usr/bin/env bash
# DreamerV2 as its published scores ran it (`dreamerv2_repro`, its own sizes: depth 48, 32 x 32
# categorical latents, 16 x 50 batches) toward its published 100k-env-step point, in one call of
# the device tool: `diswm experiment reproduce` on cartpole_swingup and cheetah_run at once (one
# seed each, the two learners sharing the card, bf16 compiled), through the distributed runtime,
# stopped with SIGTERM when the call's time is nearly up (each run checkpoints; a rerun resumes),
# then `diswm report` beside DreamerV2's and DreamerV3's published seeds. What comes back in $OUT:
# repro.log, the report (results.md, aggregate.csv, one PNG per task), each run's eval.csv,
# train.csv, config.yaml, random.json and last open-loop image, gpu.txt (the card), and
# inductor-cache.tar.gz (carry it as .inductor/ next time: a cold compile takes minutes).
#
#   run(command="bash scripts/gpu_repro.sh", carry=[".whl", ".gl", ".inductor"], timeout_s=590)
#
# Carry: .whl (WITH_RAY=1 scripts/device_bundle.sh) and .gl. Knobs: BUDGET (the call's seconds,
# default 540), TASKS, STEPS (default 100000), ACTORS (per run, default 5), SEEDS (default 1),
# EXTRA (more --set overrides).
# A dry run on this CPU at the `tiny` size (no bundle, the local venv, a few minutes):
#   LOCAL=1 OUT=/tmp/repro-out bash scripts/gpu_repro.sh
set -u
T0=$SECONDS
BUDGET=${BUDGET:-540}
left() { echo $((BUDGET - (SECONDS - T0))); }
: "${OUT:?set OUT to the folder that comes back}"
mkdir -p "$OUT"
if [ -z "${LOCAL:-}" ]; then
  . scripts/device_setup.sh
  PY=python3
  SIZE=(--budget paper)
  SET=(train.device=cuda train.precision=bf16 train.compile=true runtime.learner_gpus=0.5
       "train.steps=${STEPS:-100000}" train.eval_every=10000 train.eval_episodes=5
       train.checkpoint_every=10000 "runtime.actors=${ACTORS:-5}")
else
  PY=.venv/bin/python
  SIZE=(--budget cpu --config tiny)
  SET=(train.device=cpu "train.steps=${STEPS:-1200}" train.prefill=200 train.pretrain_updates=2
       train.eval_every=600 train.eval_episodes=1 train.checkpoint_every=600 env.time_limit=200
       train.compile=false runtime.actors=1)
fi
echo "setup done at $((SECONDS - T0)) s"
RUNS=/tmp/gpu-repro
T=$(( $(left) - 120 ))  # the stop (up to 90 s before a kill), the report and the copies
echo "reproduction for $T s: ${TASKS:-dmc:cartpole_swingup dmc:cheetah_run}"
# shellcheck disable=SC2086
timeout -s TERM -k 90 "$T" $PY -m ops experiment reproduce \
  --tasks ${TASKS:-dmc:cartpole_swingup dmc:cheetah_run} --seeds "${SEEDS:-1}" --parallel 2 \
  "${SIZE[@]}" --out "$RUNS" --set "${SET[@]}" ${EXTRA:-} >"$OUT/repro.log" 2>&1
echo "reproduce rc=$? at $((SECONDS - T0)) s (124 or 143: stopped at the time limit; 137: killed
  90 s after that, its files up to the last evaluation kept)"
grep -E "eval at|done in|error" "$OUT/repro.log" | tail -20
$PY -m ops report "$RUNS/runs" --out "$OUT/report" --published dreamerv2 dreamerv3 \
  >"$OUT/report.log" 2>&1
echo "report rc=$?"; cat "$OUT/report/results.md" 2>/dev/null
for run in "$RUNS"/runs/*/; do
  name=$(basename "$run"); mkdir -p "$OUT/runs/$name"
  for f in eval.csv episodes.csv train.csv config.yaml random.json experiment.json summary.json \
           curve.png; do
    [ -f "$run$f" ] && cp "$run$f" "$OUT/runs/$name/"
  done
  last=$(ls "$run"openloop/*.png 2>/dev/null | sort -V | tail -1)
  [ -n "$last" ] && cp "$last" "$OUT/runs/$name/"
  tail -1 "$run"train.csv 2>/dev/null | cut -c1-120
done
if [ -z "${LOCAL:-}" ] && [ -d /tmp/inductor-cache ]; then
  tar -czf "$OUT/inductor-cache.tar.gz" -C /tmp inductor-cache
fi
ls -la "$OUT" "$OUT"/runs
