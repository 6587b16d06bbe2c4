#!/usr/bin/env bash
# Build ros2_ws with colcon and run crl_runtime's tests (pytest, ament_flake8, ament_pep257)
# against the installed package and executables.
#
#   ros2_ws/test.sh .venv/bin        # the venv holding crl and its `ros` extra
#
# DDS discovery multicasts on every interface, so the tests run inside a private network
# namespace with only loopback up (`unshare -n`, as root), discovery limited to localhost and a
# ROS domain per test. Where no namespace can be made, the tests that start ROS skip, saying
# so; nothing here ever runs DDS on the host's network. Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$(cd "${1:?usage: ros2_ws/test.sh VENV_BIN [pytest args]}" && pwd)"
shift
for tool in python colcon; do
  if [ ! -x "$bin/$tool" ]; then
    echo "ros2_ws/test.sh: no $bin/$tool; install crl's ros extra into that venv:" \
      "pip install -e '.[ros]'" >&2
    exit 2
  fi
done
# The installed nodes start with `/usr/bin/env python3`: the venv's python3 must come first.
export PATH="$bin:$PATH"
cd "$here"
colcon build --base-paths src --event-handlers console_cohesion- summary+
# colcon's setup scripts read unset variables.
set +u
# shellcheck disable=SC1091
source install/setup.bash
set -u
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
unset ROS_STATIC_PEERS ROS_LOCALHOST_ONLY
# From ros2_ws, not the package folder, so that Python imports the installed crl_runtime.
tests=(python -m pytest src/crl_runtime/test "$@")
if command -v ip >/dev/null && unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' bash "${tests[@]}"
fi
echo "ros2_ws/test.sh: cannot make a private network namespace (unshare -n needs root and" \
  "iproute2's ip): the tests that start ROS skip" >&2
exec "${tests[@]}"
