# Sourced by the device scripts (gpu_check.sh, gpu_repro.sh) on a lent GPU machine: unpacks the
# carried bundle (.gl: GL/EGL loaders and redis-server; .whl: the cp312 site-packages that the
# machine's python3 lacks), sets the environment, records the card, and carries inductor's cache
# in. Needs $OUT and $T0 (the script's start, in $SECONDS).
# Only the GL/EGL loaders go into /; redis-server and its libraries unpack elsewhere (a Debian
# package unpacked over / can replace the image's /lib link and break the C toolchain).
for f in .gl/*.deb; do
  case "$f" in *redis*|*jemalloc*|*lzf*) dpkg -x "$f" /tmp/redis-root ;; *) dpkg -x "$f" / ;; esac
done; ldconfig
mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site312.tar.xz || exit 3
export PYTHONPATH=/tmp/site:$PWD MUJOCO_GL=egl PYOPENGL_PLATFORM=egl PYTHONUNBUFFERED=1
export PATH=$PATH:/tmp/redis-root/usr/bin LD_LIBRARY_PATH=/tmp/redis-root/usr/lib/x86_64-linux-gnu
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__)"
  redis-server --version; git rev-parse --short HEAD; } 2>&1 | tee "$OUT/gpu.txt"
# Inductor's caches (FX graphs, Triton kernels): a cold compile of the 50 x 50 learner takes about
# 4 minutes on an H100 or H200, a warm one about 20 s. The cache this call leaves comes back as
# $OUT/inductor-cache.tar.gz; copy it to .inductor/ (git-ignored) and carry ".inductor" next time
# (H100 and H200 are both sm_90; the cache is keyed on torch's version and the graphs).
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
[ -f .inductor/inductor-cache.tar.gz ] && tar -C /tmp -xzf .inductor/inductor-cache.tar.gz \
  && echo "inductor cache: $(du -sh /tmp/inductor-cache | cut -f1) carried in"
