#!/usr/bin/env bash
# The project's copy of the workplace tool shared/tools/slurm-single-node.sh; .ci/run starts and stops it.
# Single-node SLURM cluster for CI (Debian 12, slurm-wlm 22.05, munge 0.5.15), run as root.
# No systemd, no cgroups, no accounting (slurmdbd); daemons are started directly and stopped by PID.
#   sudo ./slurm-single-node.sh up      # install, configure, start munged + slurmctld + slurmd, wait for idle
#   sudo ./slurm-single-node.sh check   # srun + sbatch smoke test
#   sudo ./slurm-single-node.sh down    # stop the daemons this script started (by PID), remove the sacct shim
set -euo pipefail

STATE=/run/slurm-ci               # PIDs of the daemons started here
SHIM=/usr/local/bin/sacct         # sacct stand-in (see below); must precede /usr/bin on PATH
HOST=$(hostname -s)

start() {   # start NAME PIDFILE CMD...: the daemon forks; keep the PID it writes
  local name=$1 pidfile=$2; shift 2
  rm -f "$pidfile"
  "$@"
  for _ in $(seq 50); do [ -s "$pidfile" ] && break; sleep 0.1; done
  cp "$pidfile" "$STATE/$name.pid"
}

up() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurm-wlm munge   # slurmctld slurmd slurm-client munge
  mkdir -p "$STATE" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

  # The node name must equal `hostname -s` and resolve.
  getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts

  # munge: key and dirs owned by munge (munged refuses insecure ownership and should not run as root).
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then      # reuse a munged systemd already runs
    start munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
  fi

  # Node line from the hardware (CPUs, sockets, cores, threads); RealMemory = 80% of MemAvailable.
  local mem node
  mem=$(awk '/^MemAvailable/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  node=$(slurmd -C | head -1 | sed "s/RealMemory=[0-9]*/RealMemory=$mem/")
  cat > /etc/slurm/slurm.conf <<EOF
ClusterName=ci
SlurmctldHost=$HOST
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
KillWait=5
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

  # sacct stand-in: without slurmdbd the real sacct fails, and submitit then never learns that a job died
  # without writing its result (exit before the result pickle, scancel, kill): the multirun waits forever.
  # This answers `sacct -o JobID,State,NodeList --parsable2 -j ID ...` from scontrol (jobs kept MinJobAge s).
  cat > "$SHIM" <<'EOF'
#!/bin/bash
ids=()
while [ $# -gt 0 ]; do case "$1" in -j) ids+=("$2"); shift 2 ;; -j*) ids+=("${1#-j}"); shift ;; *) shift ;; esac; done
echo "JobID|State|NodeList"
for id in "${ids[@]}"; do for one in ${id//,/ }; do
  scontrol show job -o "$one" 2>/dev/null | awk '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = substr($i, length(kv[1]) + 2) }
    jid = v["JobId"]
    if (v["ArrayJobId"] != "") { t = v["ArrayTaskId"]; jid = v["ArrayJobId"] "_" (t ~ /^[0-9]+$/ ? t : "[" t "]") }
    print jid "|" v["JobState"] "|" v["NodeList"]; delete v }'
done; done
EOF
  chmod 0755 "$SHIM"

  start slurmctld /run/slurmctld.pid /usr/sbin/slurmctld
  start slurmd /run/slurmd.pid /usr/sbin/slurmd
  for _ in $(seq 30); do
    [ "$(sinfo -h -n "$HOST" -o %t 2>/dev/null)" = idle ] && { sinfo; return 0; }
    sleep 1
  done
  echo "node $HOST not idle; see /var/log/slurm/*.log" >&2; sinfo >&2 || true; return 1
}

check() {
  srun -n1 hostname
  local out; out=$(mktemp)
  sbatch --wait -o "$out" --wrap 'hostname; sleep 2'
  cat "$out"; rm -f "$out"
}

down() {
  local d pid
  for d in slurmd slurmctld munged; do           # only what `up` started, by PID
    [ -f "$STATE/$d.pid" ] || continue
    pid=$(cat "$STATE/$d.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$STATE/$d.pid"
  done
  rm -f "$SHIM"
}

"${1:?usage: $0 up|check|down}"
