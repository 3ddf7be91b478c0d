# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_throttle_global_optspecs
    string join \n down= up= burst= exclude= only= user= keep-env= name= kill-after= wait-all summary= h/help V/version
end

function __fish_throttle_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_throttle_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_throttle_using_subcommand
    set -l cmd (__fish_throttle_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c throttle -n "__fish_throttle_needs_command" -l down -d 'Limit the download (ingress) rate; unlimited if omitted' -r
complete -c throttle -n "__fish_throttle_needs_command" -l up -d 'Limit the upload (egress) rate; unlimited if omitted' -r
complete -c throttle -n "__fish_throttle_needs_command" -l burst -d 'Bucket depth: how far a burst may run ahead of the rate; at least 125 ms of each limited rate and 16K [default: 250 ms of the rate, at least 16K]' -r
complete -c throttle -n "__fish_throttle_needs_command" -l exclude -d 'Leave traffic to and from CIDR unlimited (still counted, apart); repeatable. \'local\' is loopback and link-local' -r
complete -c throttle -n "__fish_throttle_needs_command" -l only -d 'Limit only traffic to and from CIDR; repeatable. With --exclude, the longest matching network decides' -r
complete -c throttle -n "__fish_throttle_needs_command" -l user -d 'Run COMMAND as USER (name or uid), with that user\'s groups, a reset environment (see --keep-env) and a session of its own without the caller\'s controlling terminal, as \'runuser -l -c\' does; needs root. Without it the command runs as the caller: as root under sudo' -r
complete -c throttle -n "__fish_throttle_needs_command" -l keep-env -d 'With --user, keep the caller\'s variable NAME (repeatable, or NAME,NAME); the command otherwise gets PATH, HOME, SHELL, USER, LOGNAME, TERM and the locale only, as \'runuser -l\' and sudo\'s env_reset give it' -r
complete -c throttle -n "__fish_throttle_needs_command" -l name -d 'Name of the run, for \'throttle list/set/stats\' [default: COMMAND-PID]' -r
complete -c throttle -n "__fish_throttle_needs_command" -l kill-after -d 'After COMMAND exits, how long processes it left behind get between SIGTERM and SIGKILL' -r
complete -c throttle -n "__fish_throttle_needs_command" -l summary -d 'At exit, print one line on stderr: bytes, duration, average rates and drops per direction. UDP sent over the upload limit is dropped without telling the sender (iperf3 reports 0% loss): its drops are counted here and in \'throttle stats\'' -r -f -a "text\t'For people: units and rounding'
json\t'One JSON object with exact byte and packet counts, for scripts'"
complete -c throttle -n "__fish_throttle_needs_command" -l wait-all -d 'After COMMAND exits, wait for the processes it left behind (still throttled) instead of killing them'
complete -c throttle -n "__fish_throttle_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c throttle -n "__fish_throttle_needs_command" -s V -l version -d 'Print version'
complete -c throttle -n "__fish_throttle_needs_command" -a "doctor" -d 'Check this machine for everything throttle needs, and say how to fix what is missing'
complete -c throttle -n "__fish_throttle_needs_command" -a "cleanup" -d 'Remove what runs killed with SIGKILL left behind (cgroups, lock files); live runs are never touched'
complete -c throttle -n "__fish_throttle_needs_command" -a "list" -d 'List the live runs you may see, with limits, current rates and totals'
complete -c throttle -n "__fish_throttle_needs_command" -a "set" -d 'Change a live run\'s limits (within 100 ms); RATE or \'unlimited\''
complete -c throttle -n "__fish_throttle_needs_command" -a "stats" -d 'Show a live run\'s current rates (sampled over the interval) and totals'
complete -c throttle -n "__fish_throttle_needs_command" -a "attach" -d 'Limit what already runs: every socket of a cgroup, a systemd unit or a container, until it is gone, Ctrl-C or \'throttle detach\'; nothing is moved or killed'
complete -c throttle -n "__fish_throttle_needs_command" -a "detach" -d 'Lift an attached run\'s limits, as Ctrl-C in its terminal does'
complete -c throttle -n "__fish_throttle_needs_command" -a "completions" -d 'Print shell completions to stdout'
complete -c throttle -n "__fish_throttle_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c throttle -n "__fish_throttle_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c throttle -n "__fish_throttle_using_subcommand cleanup" -s h -l help -d 'Print help'
complete -c throttle -n "__fish_throttle_using_subcommand list" -l json -d 'One JSON array, for scripts'
complete -c throttle -n "__fish_throttle_using_subcommand list" -s h -l help -d 'Print help'
complete -c throttle -n "__fish_throttle_using_subcommand set" -l down -d 'New download limit' -r
complete -c throttle -n "__fish_throttle_using_subcommand set" -l up -d 'New upload limit' -r
complete -c throttle -n "__fish_throttle_using_subcommand set" -l burst -d 'New bucket depth' -r
complete -c throttle -n "__fish_throttle_using_subcommand set" -l exclude -d 'Replace the run\'s --exclude list (repeatable; \'none\' empties it)' -r
complete -c throttle -n "__fish_throttle_using_subcommand set" -l only -d 'Replace the run\'s --only list (repeatable; \'none\' empties it)' -r
complete -c throttle -n "__fish_throttle_using_subcommand set" -s h -l help -d 'Print help'
complete -c throttle -n "__fish_throttle_using_subcommand stats" -l watch -d 'Keep refreshing every INTERVAL [default: 1s]' -r
complete -c throttle -n "__fish_throttle_using_subcommand stats" -l json -d 'JSON lines, for scripts'
complete -c throttle -n "__fish_throttle_using_subcommand stats" -s h -l help -d 'Print help'
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l down -d 'Limit the download (ingress) rate; unlimited if omitted' -r
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l up -d 'Limit the upload (egress) rate; unlimited if omitted' -r
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l burst -d 'Bucket depth: how far a burst may run ahead of the rate; at least 125 ms of each limited rate and 16K [default: 250 ms of the rate, at least 16K]' -r
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l exclude -d 'Leave traffic to and from CIDR unlimited (still counted, apart); repeatable. \'local\' is loopback and link-local' -r
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l only -d 'Limit only traffic to and from CIDR; repeatable. With --exclude, the longest matching network decides' -r
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l cgroup -d 'The cgroup v2 directory to attach to, absolute or relative to the cgroup2 mount' -r -F
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l unit -d 'A systemd unit of the system manager (nginx.service, user-1000.slice): its cgroup' -r
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l user-unit -d 'A systemd unit of your own user manager (systemctl --user): its cgroup' -r
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l container -d 'A running podman or docker container, by name or id: its cgroup' -r
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l name -d 'Name of the run, for \'throttle list/set/stats/detach\' [default: the target\'s name and this pid]' -r
complete -c throttle -n "__fish_throttle_using_subcommand attach" -l summary -d 'At detach, print one line on stderr: bytes, duration, average rates and drops per direction' -r -f -a "text\t'For people: units and rounding'
json\t'One JSON object with exact byte and packet counts, for scripts'"
complete -c throttle -n "__fish_throttle_using_subcommand attach" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c throttle -n "__fish_throttle_using_subcommand detach" -s h -l help -d 'Print help'
complete -c throttle -n "__fish_throttle_using_subcommand completions" -s h -l help -d 'Print help'
complete -c throttle -n "__fish_throttle_using_subcommand help; and not __fish_seen_subcommand_from doctor cleanup list set stats attach detach completions help" -f -a "doctor" -d 'Check this machine for everything throttle needs, and say how to fix what is missing'
complete -c throttle -n "__fish_throttle_using_subcommand help; and not __fish_seen_subcommand_from doctor cleanup list set stats attach detach completions help" -f -a "cleanup" -d 'Remove what runs killed with SIGKILL left behind (cgroups, lock files); live runs are never touched'
complete -c throttle -n "__fish_throttle_using_subcommand help; and not __fish_seen_subcommand_from doctor cleanup list set stats attach detach completions help" -f -a "list" -d 'List the live runs you may see, with limits, current rates and totals'
complete -c throttle -n "__fish_throttle_using_subcommand help; and not __fish_seen_subcommand_from doctor cleanup list set stats attach detach completions help" -f -a "set" -d 'Change a live run\'s limits (within 100 ms); RATE or \'unlimited\''
complete -c throttle -n "__fish_throttle_using_subcommand help; and not __fish_seen_subcommand_from doctor cleanup list set stats attach detach completions help" -f -a "stats" -d 'Show a live run\'s current rates (sampled over the interval) and totals'
complete -c throttle -n "__fish_throttle_using_subcommand help; and not __fish_seen_subcommand_from doctor cleanup list set stats attach detach completions help" -f -a "attach" -d 'Limit what already runs: every socket of a cgroup, a systemd unit or a container, until it is gone, Ctrl-C or \'throttle detach\'; nothing is moved or killed'
complete -c throttle -n "__fish_throttle_using_subcommand help; and not __fish_seen_subcommand_from doctor cleanup list set stats attach detach completions help" -f -a "detach" -d 'Lift an attached run\'s limits, as Ctrl-C in its terminal does'
complete -c throttle -n "__fish_throttle_using_subcommand help; and not __fish_seen_subcommand_from doctor cleanup list set stats attach detach completions help" -f -a "completions" -d 'Print shell completions to stdout'
complete -c throttle -n "__fish_throttle_using_subcommand help; and not __fish_seen_subcommand_from doctor cleanup list set stats attach detach completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
