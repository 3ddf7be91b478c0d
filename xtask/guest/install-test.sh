#!/bin/sh
# Runs in the Debian 12 guest of `cargo xtask install-test`, as root, from a
# systemd unit: installs the package from the shared directory /lab, then
# uses throttle as two ordinary users logged in through PAM (su -l starts a
# logind session and the user's systemd manager, as an SSH login does).
# Prints one "ok"/"FAIL" line per check; exits 1 if any failed.

failures=0
check() { # NAME, then a command that succeeds when the check passes
    name=$1
    shift
    if "$@"; then echo "ok    $name"; else echo "FAIL  $name"; failures=$((failures + 1)); fi
}
as() { # USER COMMAND: COMMAND in a login shell of USER, through PAM
    su -l "$1" -c "$2"
}
within() { # LOW HIGH VALUE: LOW <= VALUE <= HIGH
    awk -v lo="$1" -v hi="$2" -v v="$3" 'BEGIN { exit !(v >= lo && v <= hi) }'
}

echo "guest: $(uname -r), pid 1 is $(cat /proc/1/comm), $(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup"
useradd -m -s /bin/sh alice
useradd -m -s /bin/sh bob

check "the package installs" dpkg -i /lab/throttle.deb
check "postinst granted the file capabilities" sh -c 'getcap /usr/bin/throttle | grep -q "cap_net_admin,cap_perfmon,cap_bpf=ep"'
check "the man page and completions are installed" test -f /usr/share/man/man1/throttle.1.gz \
    -a -f /usr/share/bash-completion/completions/throttle \
    -a -f /usr/share/zsh/vendor-completions/_throttle \
    -a -f /usr/share/fish/vendor_completions.d/throttle.fish

head -c 8M /dev/urandom > /srv/file
(cd /srv && exec python3 -m http.server --bind 127.0.0.1 8000 >/dev/null 2>&1) &
server=$!
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:8000/file && break; sleep 0.2; done

echo "--- alice: throttle doctor"
as alice 'throttle doctor'
check "doctor passes for alice, in a delegated scope" as alice 'throttle doctor | grep -q "a scope delegated by your systemd user manager"'

# Everything below user@UID.service is the user's to write (systemd hands the
# manager's subtree to the user), so the run's cgroup goes right there.
echo "--- alice: from a scope that is not delegated, as a desktop terminal's"
terminal=$(as alice 'systemd-run --user --scope --quiet throttle -- cat /proc/self/cgroup' 2>&1)
echo "$terminal"
check "a run from a terminal's app scope works" sh -c "echo '$terminal' | grep -q '/app.slice/.*@1000$'"

echo "--- bob, with no login and so no user manager"
nologin=$(setpriv --reuid=bob --regid=bob --init-groups env -u XDG_RUNTIME_DIR throttle --down 1M -- true 2>&1)
status=$?
echo "$nologin"
refused_with_the_fix() { [ "$status" -ne 0 ] && echo "$nologin" | grep -q "loginctl enable-linger"; }
check "the run is refused, naming what fixes it" refused_with_the_fix

echo "--- alice: a download at 1 MiB/s"
rate=$(as alice 'throttle --down 1M -- curl -s -o /dev/null -w "%{speed_download}" http://127.0.0.1:8000/file')
echo "achieved $rate B/s, $(awk -v r="$rate" 'BEGIN { printf "%.3f", r / 1048576 }') of the limit"
check "alice's download holds 0.90-1.05 of the limit" within 943718 1101005 "$rate"
caps=$(as alice 'throttle --down 1M -- grep -E "^Cap(Prm|Eff|Amb):" /proc/self/status')
echo "$caps"
check "alice's command holds no capabilities" test "$(echo "$caps" | grep -c "[[:space:]]0000000000000000$")" = 3

echo "--- alice: list, set and stats on a live run"
as alice 'throttle --name fetch --down 64K -- curl -s -o /dev/null http://127.0.0.1:8000/file' &
fetch=$!
for _ in $(seq 50); do as alice 'throttle list' 2>/dev/null | grep -q fetch && break; sleep 0.2; done
as alice 'throttle list'
check "alice lists her run" sh -c 'su -l alice -c "throttle list" | grep -q fetch'
check "alice changes its limit" as alice 'throttle set fetch --down 128K'
check "the change shows in list" sh -c 'su -l alice -c "throttle list --json" | grep -q "\"rate\":131072"'
check "alice reads its stats" as alice 'throttle stats fetch'

echo "--- bob: alice's run is not his"
check "bob does not see it" sh -c '! su -l bob -c "throttle list" | grep -q fetch'
check "bob may not change it" sh -c '! su -l bob -c "throttle set fetch --down 1M" 2>/dev/null'
check "bob may not read its stats" sh -c '! su -l bob -c "throttle stats fetch" 2>/dev/null'
check "bob's run of the same name goes ahead" as bob 'throttle --name fetch --down 1M -- true'
check "bob's cleanup leaves alice's run alone" sh -c 'su -l bob -c "throttle cleanup" && su -l alice -c "throttle list" | grep -q fetch'
as alice 'throttle set fetch --down unlimited' >/dev/null
wait "$fetch"

echo "--- alice: the wrapper killed with SIGKILL"
as alice 'throttle --name held -- sleep 300' &
held=$!
for _ in $(seq 50); do pgrep -u alice -x sleep >/dev/null && break; sleep 0.2; done
# The wrapper is the command's parent (its watchdog shares its command line).
wrapper=$(ps -o ppid= -p "$(pgrep -u alice -x sleep)" | tr -d ' ')
check "the wrapper runs as alice, in its own scope" sh -c "grep -q 'throttle-$wrapper.scope' /proc/$wrapper/cgroup"
check "its programs are loaded" sh -c 'bpftool prog show | grep -q " name throttle_"'
kill -9 "$wrapper"
for _ in $(seq 50); do pgrep -u alice -x sleep >/dev/null || break; sleep 0.2; done
check "the command went with the wrapper" sh -c '! pgrep -u alice -x sleep'
sleep 1
check "no run cgroup is left" sh -c '! find /sys/fs/cgroup -name "*@1000" -o -name "throttle-*.scope" | grep -q .'
check "no throttle program is left loaded" sh -c '! bpftool prog show | grep -q " name throttle_"'
check "doctor finds nothing stale" sh -c 'su -l alice -c "throttle doctor" | grep -q "stale runs: none"'
wait "$held"

echo "--- alice: throttle attach --user-unit, on a unit of her own user manager"
loginctl enable-linger alice
as alice 'systemd-run --user --quiet --unit=thr-mine sleep 300'
mine_cgroup=/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/thr-mine.service
mine=$(as alice 'throttle attach --down 1M --user-unit thr-mine.service --name mine & sleep 2; throttle list; throttle detach mine; wait $!; echo "status $?"' 2>&1)
echo "$mine"
check "alice attaches to a unit of her own manager" sh -c "echo '$mine' | grep -q '(attached) user unit thr-mine.service'"
check "her attach detaches with status 0" sh -c "echo '$mine' | grep -q 'status 0'"
as bob "throttle attach --down 1M --cgroup $mine_cgroup" 2>/dev/null
check "bob may not attach to alice's unit (status 10)" test "$?" = 10
check "alice's unit still runs" as alice 'systemctl --user is-active --quiet thr-mine.service'
check "no program is left on alice's unit" sh -c "! bpftool cgroup show $mine_cgroup | grep -q throttle_"
as alice 'systemctl --user stop thr-mine.service'
loginctl disable-linger alice

echo "--- root: throttle attach --unit, on a service that downloads in a loop"
systemd-run --quiet --unit=thr-fetch sh -c 'while :; do curl -s -o /dev/null http://127.0.0.1:8000/file; done'
sleep 1
throttle attach --down 1M --unit thr-fetch.service --name unitrun &
attacher=$!
sleep 3
unit_cgroup=/sys/fs/cgroup/system.slice/thr-fetch.service
check "attach --unit puts the programs on the unit's cgroup" sh -c "bpftool cgroup show $unit_cgroup | grep -q throttle_down"
check "list shows the attached unit" sh -c 'throttle list | grep -q "(attached) unit thr-fetch.service"'
rate=$(throttle stats unitrun --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["down_rate"])')
echo "the unit's download rate under --down 1M: $rate B/s"
check "the unit's downloads hold 0.80-1.25 of the limit" within 838861 1310720 "$rate"
throttle detach unitrun
wait $attacher
check "detach ends the attach with status 0" test "$?" = 0
check "the unit still runs" systemctl is-active --quiet thr-fetch.service
check "no program is left on the unit" sh -c "! bpftool cgroup show $unit_cgroup | grep -q throttle_"
systemctl stop thr-fetch.service

echo "--- root: throttle attach --container, on a podman container that downloads in a loop"
mkdir -p /srv/ctr/bin
cp /bin/busybox /srv/ctr/bin/
for tool in sh wget; do ln -sf busybox "/srv/ctr/bin/$tool"; done
podman run -d --name thr-ctr --network host --rootfs /srv/ctr /bin/sh -c \
    'while :; do wget -q -O /dev/null http://127.0.0.1:8000/file; done' >/dev/null
sleep 2
throttle attach --down 1M --container thr-ctr --name ctrrun &
attacher=$!
sleep 3
ctr_cgroup=/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$(podman inspect --format '{{.State.Pid}}' thr-ctr)/cgroup")
echo "the container's cgroup: $ctr_cgroup"
check "attach --container puts the programs on the container's cgroup" sh -c "bpftool cgroup show $ctr_cgroup | grep -q throttle_down"
check "list shows the attached container" sh -c 'throttle list | grep -q "(attached) container thr-ctr"'
rate=$(throttle stats ctrrun --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["down_rate"])')
echo "the container's download rate under --down 1M: $rate B/s"
check "the container's downloads hold 0.80-1.25 of the limit" within 838861 1310720 "$rate"
throttle detach ctrrun
wait $attacher
check "detach ends the container's attach with status 0" test "$?" = 0
check "the container still runs" sh -c "podman inspect --format '{{.State.Running}}' thr-ctr | grep -q true"
check "no program is left on the container" sh -c "! bpftool cgroup show $ctr_cgroup | grep -q throttle_"
podman rm -f -t 0 thr-ctr >/dev/null

kill "$server" 2>/dev/null
echo "--- removing the package"
check "the package removes" dpkg -r throttle
check "nothing is left" sh -c '! test -e /usr/bin/throttle && ! test -e /run/throttle && ! dpkg -L throttle 2>/dev/null | grep -q /'

echo "install-test: $failures check(s) failed"
[ "$failures" -eq 0 ]
