#!/usr/bin/env bash
# One call of the device tool (/work/.library/device/README.md), about 9.5 minutes, in three
# parts, each bounded so that the later ones still run:
#   1. the precision gate on CUDA (tests/test_precision.py, cuda-bf16 and cuda-fp16 cases);
#   2. `diswm bench learner` at both sizes: eager fp32 (the baseline, same run), bf16 eager,
#      bf16 compiled, bf16 with CUDA graphs, fp16;
#   3. the distributed runtime on the GPU: Ray actors, the Redis replay and a GPU learner
#      (`diswm run`, DreamerV2 on dmc:cartpole_swingup, no distraction), stopped with SIGINT
#      when the call's time is nearly up.
# Carry: .whl (WITH_RAY=1 scripts/device_bundle.sh), .gl, and .inductor if a past call left a
# cache. Results land in $OUT. Knobs: NO_GATE=1, NO_BENCH=1, NO_DIST=1, SIZES, MODES, BENCH_S (bench's
# limit), COMPILE (the distributed run's train.compile), EVAL_EVERY, BUDGET (the call's seconds),
# REPLAY=1 (first, `diswm bench replay` and `--shards 1 2 3` on the machine's 16 cores, issue 14;
# WRITERS: its writer processes, 4 by default; SAMPLE_THREADS: replay.sample_threads
# for the sample-path bench; SAMPLE_WORKERS: a list of replay.sample_workers, each a bench run;
# NO_SHARDS=1 skips the shard bench). DIST_WORKERS: the distributed run's replay.sample_workers.
#
#   run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gl", ".inductor"], timeout_s=600)
# The H100 compiled figure (issue 10), cold: a cold compile needs ~4 minutes, so give the bench
# the call:  NO_GATE=1 NO_DIST=1 SIZES=defaults MODES="eager bf16_compile" BENCH_S=480
# With the replay benches first (about 3 minutes): REPLAY=1 ... BENCH_S=380
set -u
T0=$SECONDS
BUDGET=${BUDGET:-575}
left() { echo $((BUDGET - (SECONDS - T0))); }
. scripts/device_setup.sh
echo "setup done at $((SECONDS - T0)) s"

# 0. The replay benches (CPU and Redis only; run before anything else loads the cores).
if [ -n "${REPLAY:-}" ]; then
  for w in ${SAMPLE_WORKERS:-0}; do  # replay.sample_workers (0: the bench's default, 4 there)
    t=${SAMPLE_THREADS:-0}  # replay.sample_threads (0: the default, 4 there)
    timeout 150 python3 -m ops bench replay --set replay.sample_threads=$t replay.sample_workers=$w \
      --json "$OUT/replay-16cores-t$t-w$w.json" >"$OUT/replay-t$t-w$w.log" 2>&1
    echo "replay (sample_threads=$t, sample_workers=$w) rc=$? at $((SECONDS - T0)) s"
    tail -9 "$OUT/replay-t$t-w$w.log"
  done
  if [ -z "${NO_SHARDS:-}" ]; then
    timeout 100 python3 -m ops bench replay --shards 1 2 3 --writers ${WRITERS:-4} \
      --json "$OUT/replay-shards-16cores.json" >"$OUT/shards.log" 2>&1
    echo "shards rc=$? at $((SECONDS - T0)) s"; tail -12 "$OUT/shards.log"
  fi
fi

# 1. The precision gate on CUDA.
if [ -z "${NO_GATE:-}" ]; then
  timeout 170 python3 -m pytest -q -rA -p no:cacheprovider tests/test_precision.py -k cuda \
    >"$OUT/gate.log" 2>&1
  echo "gate rc=$? at $((SECONDS - T0)) s"; tail -9 "$OUT/gate.log"
fi

# 2. The learner bench.
if [ -z "${NO_BENCH:-}" ]; then
  timeout "${BENCH_S:-200}" python3 -m ops bench learner --sizes ${SIZES:-defaults debug} \
    --modes ${MODES:-eager bf16 bf16_compile bf16_cudagraphs fp16} --rounds 2 --updates 5 \
    --json "$OUT/learner-h100.json" >"$OUT/bench.log" 2>&1
  echo "bench rc=$? at $((SECONDS - T0)) s"; tail -25 "$OUT/bench.log"
  [ -d /tmp/inductor-cache ] && tar -czf "$OUT/inductor-cache.tar.gz" -C /tmp inductor-cache \
    && ls -la "$OUT/inductor-cache.tar.gz"
fi

# 3. The distributed runtime with a GPU learner, for what time is left.
if [ -n "${NO_DIST:-}" ]; then ls -la "$OUT"; exit 0; fi
T=$(( $(left) - 25 ))
echo "distributed run for $T s"
RUN=/tmp/gpu-dist
timeout -s INT -k 20 "$T" python3 -m ops run --config finger_spin_to_cartpole_swingup dreamerv2 \
  --set distraction.enabled=false train.device=cuda train.precision=bf16 train.compile=${COMPILE:-true} \
        runtime.actors=8 train.eval_every=${EVAL_EVERY:-4000} train.eval_episodes=4 train.steps=200000 \
        replay.sample_workers=${DIST_WORKERS:-0} \
  --run-dir "$RUN" >"$OUT/dist.log" 2>&1
echo "distributed rc=$? at $((SECONDS - T0)) s"; tail -15 "$OUT/dist.log"
tail -2 "$RUN/train.csv" 2>/dev/null; cat "$RUN/eval.csv" 2>/dev/null
rm -rf "$RUN"/checkpoints "$RUN"/redis
tar -czf "$OUT/gpu-dist.tar.gz" -C /tmp gpu-dist 2>/dev/null
ls -la "$OUT"
