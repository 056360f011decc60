#!/usr/bin/env bash
# Real ssh servers for the simulated hosts of netns.sh (needs root, Debian's openssh-server): one sshd
# per host namespace, listening on that host's address only, each with a host key made for this run, a
# user of its own (its home under DIR, so each "host" has its own ~/.modelpool) and key login only (no
# passwords, no root). The client key, the known hosts and an ssh client configuration go to DIR.
#
#   sshd.sh up PREFIX N DIR      create users, keys and configurations, start the servers
#   sshd.sh hosts PREFIX N       print a hosts file for `coordinator multihost` with ssh: targets
#   sshd.sh user PREFIX I        the user name of host I
#   sshd.sh down PREFIX N DIR    stop the servers, remove the users and their homes
# NET defaults to 10.231.0 (MODELPOOL_SIM_NET), as in netns.sh.
set -euo pipefail
command=${1:?usage: sshd.sh up|hosts|user|down PREFIX N [DIR]}
prefix=${2:?a PREFIX names the namespaces}
net=${MODELPOOL_SIM_NET:-10.231.0}
user_of() { echo "${prefix}s$1"; }

down() {
  local count=$1 dir=$2
  for i in $(seq 1 "$count"); do
    if [ -f "$dir/sshd$i.pid" ]; then kill "$(cat "$dir/sshd$i.pid")" 2>/dev/null || true; fi
    pkill -KILL -u "$(user_of "$i")" 2>/dev/null || true
    userdel -r "$(user_of "$i")" 2>/dev/null || true
  done
}

case "$command" in
up)
  count=${3:?N}
  dir=${4:?DIR}
  down "$count" "$dir"
  mkdir -p "$dir" /run/sshd
  chmod 755 "$dir"
  rm -f "$dir/client_key" "$dir/client_key.pub"
  ssh-keygen -q -t ed25519 -N '' -C modelpool-test-client -f "$dir/client_key"
  : > "$dir/known_hosts"
  for i in $(seq 1 "$count"); do
    user=$(user_of "$i")
    address="$net.1$i"
    # Password "*": none works, and the account is not locked (sshd refuses locked accounts outright).
    useradd --home-dir "$dir/home$i" --create-home --shell /bin/sh --password '*' "$user"
    install -d -m 700 -o "$user" -g "$user" "$dir/home$i/.ssh"
    install -m 600 -o "$user" -g "$user" "$dir/client_key.pub" "$dir/home$i/.ssh/authorized_keys"
    rm -f "$dir/host${i}_key" "$dir/host${i}_key.pub"
    ssh-keygen -q -t ed25519 -N '' -C "modelpool-test-host$i" -f "$dir/host${i}_key"
    echo "$address $(cut -d' ' -f1,2 "$dir/host${i}_key.pub")" >> "$dir/known_hosts"
    cat > "$dir/sshd$i.conf" <<CONF
ListenAddress $address
Port 22
HostKey $dir/host${i}_key
PidFile $dir/sshd$i.pid
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
AllowUsers $user
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
# scp speaks SFTP (OpenSSH 9); a default Debian sshd_config has this line too.
Subsystem sftp internal-sftp
CONF
    ip netns exec "${prefix}h$i" /usr/sbin/sshd -f "$dir/sshd$i.conf" -E "$dir/sshd$i.log"
  done
  cat > "$dir/ssh_config" <<CONF
Host *
  IdentityFile $dir/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  StrictHostKeyChecking yes
  PasswordAuthentication no
  BatchMode yes
  ConnectTimeout 5
CONF
  ;;
hosts)
  for i in $(seq 1 "${3:?N}"); do
    echo "ssh:$(user_of "$i")@$net.1$i 1 llama 1 1 $net.1$i"
  done
  ;;
user) user_of "${3:?host number}" ;;
down) down "${3:?N}" "${4:?DIR}" ;;
*) echo "sshd.sh: unknown command $command" >&2; exit 2 ;;
esac
