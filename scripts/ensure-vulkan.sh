#!/usr/bin/env bash
# Make sure ManiSkill/SAPIEN finds a usable Vulkan device (it needs one even for state observations).
# On CPU-only Debian bookworm, Mesa's lavapipe from bookworm-backports (25.x) works; bookworm's own 22.x lacks
# VK_KHR_external_semaphore_fd and fails. Usage: scripts/ensure-vulkan.sh PYTHON
set -euo pipefail
PY=${1:-python3}

probe() {
  # Creating a state-only ManiSkill env is the real test: it initialises SAPIEN's render system.
  timeout 300 "$PY" - <<'PYEOF' >/tmp/mepoly-vulkan-probe.log 2>&1
import gymnasium as gym
import mani_skill.envs  # noqa: F401  (registers the envs)
env = gym.make("PushCube-v1", obs_mode="state")
env.reset(seed=0)
env.close()
PYEOF
}

if probe; then
  echo "[vulkan] ManiSkill finds a usable Vulkan device."
  exit 0
fi

echo "[vulkan] ManiSkill could not create an environment (see /tmp/mepoly-vulkan-probe.log)."
codename=$( . /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")
fix_cmds='echo "deb http://deb.debian.org/debian bookworm-backports main" | sudo tee /etc/apt/sources.list.d/bookworm-backports.list
sudo apt-get update && sudo apt-get install -y -t bookworm-backports mesa-vulkan-drivers'

if [ "$codename" = "bookworm" ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
      echo "[vulkan] Not root and no passwordless sudo. Run this, then re-run make:"; echo "$fix_cmds"; exit 1
    fi
  fi
  echo "[vulkan] Installing mesa-vulkan-drivers (lavapipe) from bookworm-backports ..."
  echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q -t bookworm-backports mesa-vulkan-drivers libvulkan1
  if probe; then echo "[vulkan] OK after installing backports Mesa."; exit 0; fi
  echo "[vulkan] Still failing after the install; see /tmp/mepoly-vulkan-probe.log"; exit 1
fi

echo "[vulkan] Not Debian bookworm: install a Vulkan driver for your GPU, or Mesa >= 25 (lavapipe) for CPU, e.g.:"
echo "$fix_cmds"
exit 1
