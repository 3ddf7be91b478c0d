
use builtin;
use str;

set edit:completion:arg-completer[throttle] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'throttle'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'throttle'= {
            cand --down 'Limit the download (ingress) rate; unlimited if omitted'
            cand --up 'Limit the upload (egress) rate; unlimited if omitted'
            cand --burst 'Bucket depth: how far a burst may run ahead of the rate; at least 125 ms of each limited rate and 16K [default: 250 ms of the rate, at least 16K]'
            cand --exclude 'Leave traffic to and from CIDR unlimited (still counted, apart); repeatable. ''local'' is loopback and link-local'
            cand --only 'Limit only traffic to and from CIDR; repeatable. With --exclude, the longest matching network decides'
            cand --user 'Run COMMAND as USER (name or uid), with that user''s groups, a reset environment (see --keep-env) and a session of its own without the caller''s controlling terminal, as ''runuser -l -c'' does; needs root. Without it the command runs as the caller: as root under sudo'
            cand --keep-env 'With --user, keep the caller''s variable NAME (repeatable, or NAME,NAME); the command otherwise gets PATH, HOME, SHELL, USER, LOGNAME, TERM and the locale only, as ''runuser -l'' and sudo''s env_reset give it'
            cand --name 'Name of the run, for ''throttle list/set/stats'' [default: COMMAND-PID]'
            cand --kill-after 'After COMMAND exits, how long processes it left behind get between SIGTERM and SIGKILL'
            cand --summary 'At exit, print one line on stderr: bytes, duration, average rates and drops per direction. UDP sent over the upload limit is dropped without telling the sender (iperf3 reports 0% loss): its drops are counted here and in ''throttle stats'''
            cand --wait-all 'After COMMAND exits, wait for the processes it left behind (still throttled) instead of killing them'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand doctor 'Check this machine for everything throttle needs, and say how to fix what is missing'
            cand cleanup 'Remove what runs killed with SIGKILL left behind (cgroups, lock files); live runs are never touched'
            cand list 'List the live runs you may see, with limits, current rates and totals'
            cand set 'Change a live run''s limits (within 100 ms); RATE or ''unlimited'''
            cand stats 'Show a live run''s current rates (sampled over the interval) and totals'
            cand attach 'Limit what already runs: every socket of a cgroup, a systemd unit or a container, until it is gone, Ctrl-C or ''throttle detach''; nothing is moved or killed'
            cand detach 'Lift an attached run''s limits, as Ctrl-C in its terminal does'
            cand completions 'Print shell completions to stdout'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'throttle;doctor'= {
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'throttle;cleanup'= {
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'throttle;list'= {
            cand --json 'One JSON array, for scripts'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'throttle;set'= {
            cand --down 'New download limit'
            cand --up 'New upload limit'
            cand --burst 'New bucket depth'
            cand --exclude 'Replace the run''s --exclude list (repeatable; ''none'' empties it)'
            cand --only 'Replace the run''s --only list (repeatable; ''none'' empties it)'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'throttle;stats'= {
            cand --watch 'Keep refreshing every INTERVAL [default: 1s]'
            cand --json 'JSON lines, for scripts'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'throttle;attach'= {
            cand --down 'Limit the download (ingress) rate; unlimited if omitted'
            cand --up 'Limit the upload (egress) rate; unlimited if omitted'
            cand --burst 'Bucket depth: how far a burst may run ahead of the rate; at least 125 ms of each limited rate and 16K [default: 250 ms of the rate, at least 16K]'
            cand --exclude 'Leave traffic to and from CIDR unlimited (still counted, apart); repeatable. ''local'' is loopback and link-local'
            cand --only 'Limit only traffic to and from CIDR; repeatable. With --exclude, the longest matching network decides'
            cand --cgroup 'The cgroup v2 directory to attach to, absolute or relative to the cgroup2 mount'
            cand --unit 'A systemd unit of the system manager (nginx.service, user-1000.slice): its cgroup'
            cand --user-unit 'A systemd unit of your own user manager (systemctl --user): its cgroup'
            cand --container 'A running podman or docker container, by name or id: its cgroup'
            cand --name 'Name of the run, for ''throttle list/set/stats/detach'' [default: the target''s name and this pid]'
            cand --summary 'At detach, print one line on stderr: bytes, duration, average rates and drops per direction'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'throttle;detach'= {
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'throttle;completions'= {
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'throttle;help'= {
            cand doctor 'Check this machine for everything throttle needs, and say how to fix what is missing'
            cand cleanup 'Remove what runs killed with SIGKILL left behind (cgroups, lock files); live runs are never touched'
            cand list 'List the live runs you may see, with limits, current rates and totals'
            cand set 'Change a live run''s limits (within 100 ms); RATE or ''unlimited'''
            cand stats 'Show a live run''s current rates (sampled over the interval) and totals'
            cand attach 'Limit what already runs: every socket of a cgroup, a systemd unit or a container, until it is gone, Ctrl-C or ''throttle detach''; nothing is moved or killed'
            cand detach 'Lift an attached run''s limits, as Ctrl-C in its terminal does'
            cand completions 'Print shell completions to stdout'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'throttle;help;doctor'= {
        }
        &'throttle;help;cleanup'= {
        }
        &'throttle;help;list'= {
        }
        &'throttle;help;set'= {
        }
        &'throttle;help;stats'= {
        }
        &'throttle;help;attach'= {
        }
        &'throttle;help;detach'= {
        }
        &'throttle;help;completions'= {
        }
        &'throttle;help;help'= {
        }
    ]
    $completions[$command]
}
