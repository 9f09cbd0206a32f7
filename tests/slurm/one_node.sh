#!/usr/bin/env bash
# Start a one-node Slurm (Debian packages slurmctld slurmd slurm-client munge) on this machine, for the real-Slurm
# sweep test: `one_node.sh start` installs what is missing (root and apt needed), writes a slurm.conf for this host
# (partition `dytrim`, all CPUs), starts munged, slurmctld and slurmd, and waits for the node to be idle;
# `one_node.sh stop` stops them. launcher-notes.md §4.5 tier 3 describes the setup.
set -euo pipefail
conf_dir=/etc/slurm
case "${1:-start}" in
stop)
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true  # no job step outlives the test
    pkill -x slurmd || true; pkill -x slurmctld || true; pkill -x munged || true; pkill -f "^slurmstepd" || true
    sleep 1  # slurmstepd (and slurmd while it holds a step) outlive SIGTERM: what is left is killed
    pkill -KILL -f "^slurmstepd" || true; pkill -KILL -x slurmd || true; pkill -KILL -x slurmctld || true
    exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "one_node.sh: Slurm is not installed and this is not root" >&2; exit 3; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge \
        >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y \
        -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
fi
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 \
    status=none; }
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
cat > "$conf_dir/slurm.conf" <<CONF
ClusterName=dytrim
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=dytrim Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld -i
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    case "$state" in idle*|mix*|alloc*) echo "one_node.sh: Slurm up, node $host $state, partition dytrim"; exit 0 ;; esac
    sleep 1
done
echo "one_node.sh: the node did not become idle (sinfo: ${state:-nothing}); see /var/log/slurm/" >&2
exit 4
