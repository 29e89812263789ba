#!/usr/bin/env bash
# Builds what a lent GPU machine needs to run DisWM, for the device tool's `carry`
# (/work/.library/device/README.md). That machine has Python 3.12 with torch, numpy, scipy,
# pyyaml, matplotlib, imageio, prometheus-client, absl-py, lxml and protobuf, no package
# registry, and a 64 MiB limit on what travels; so this packs, from the versions pinned in
# setup.cfg, a trimmed site-packages for cp312 into .whl/site312.tar.xz and the GL/EGL loaders
# into .gl/*.deb (both git-ignored).
#
#   scripts/device_bundle.sh            # the serial runner (diswm train --serial, bench learner)
#   WITH_RAY=1 scripts/device_bundle.sh # + Ray (trimmed) and redis-server, for the distributed
#                                       #   runtime (diswm run / experiment); untried on a device
#
# On the device (see docs/results/cartpole_swingup-learning-proof/gpu_run.sh):
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
#   mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site312.tar.xz
#   export PYTHONPATH=/tmp/site:$PWD PATH=/usr/bin:$PATH MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -E "^\s*$1(\[[a-z]+\])?==" setup.cfg | sed -E 's/.*==//' | head -1; }
PY=${PY:-.venv/bin/python}
DL=$(mktemp -d)
SITE=$(mktemp -d)
trap 'rm -rf "$DL" "$SITE"' EXIT
wheels=("mujoco==$(pin mujoco)" "dm-control==$(pin dm-control)" dm-env==1.6 dm-tree==0.1.10
        PyOpenGL==3.1.10 glfw==2.11.0 websockets==17.4 "redis==$(pin redis)"
        "hiredis==$(pin hiredis)" "lz4==$(pin lz4)" "zstandard==$(pin zstandard)")
if [ -n "${WITH_RAY:-}" ]; then
  wheels+=("ray==$(pin ray)" jsonschema==4.26.0 jsonschema-specifications==2025.9.1
           referencing==0.37.0 rpds-py==2026.9.1)
fi
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
  -d "$DL" "${wheels[@]}"
# pip installs the cp312 wheels into the tree (keeping file modes: Ray's gcs_server and raylet
# must stay executable, which `python -m zipfile` does not do).
"$PY" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --target "$SITE" "$DL"/*.whl
# What DisWM never loads: dm_control's locomotion/dog assets and tests, MuJoCo's studio and
# headers, PyOpenGL's windowing toolkits; Ray's Java jars and libraries above its core.
rm -rf "$SITE"/dm_control/{locomotion/soccer,locomotion/walkers,locomotion/arenas,blender} \
       "$SITE"/dm_control/{suite/dog_assets,mujoco/testing,mjcf/test_assets,suite/all_domains.png} \
       "$SITE"/mujoco/{experimental/studio,experimental/dear_imgui,experimental/implot,include} \
       "$SITE"/OpenGL/{Tk,GLUT,WGL,AGL}
if [ -n "${WITH_RAY:-}" ]; then
  rm -rf "$SITE"/ray/{jars,rllib,serve,data,llm,train,tune,dashboard/client}
fi
mkdir -p .whl .gl
tar -C "$SITE" -cJf .whl/site312.tar.xz .
debs=(libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
[ -n "${WITH_RAY:-}" ] && debs+=(redis-server redis-tools libjemalloc2 liblzf1)
opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
mkdir -p /tmp/amd64/partial
apt-get "${opts[@]}" update >/dev/null
(cd .gl && apt-get "${opts[@]}" download "${debs[@]}" 2>/dev/null)
du -sh .whl .gl
echo "carry: [\".whl\", \".gl\"] (the limit is 64 MiB with the working tree)"
