/*
 * sk-exec: the command's process of a warm container (see exec_helper.py).
 *
 * PID 1 spawns it before the job comes, with the socket to the monitor on
 * fd 3 and the error pipe on fd 4. It says "ready" (the monitor reads its pid
 * from the message's credentials), waits for the plan and the three stdio
 * fds (and, for a container with a user namespace, a fourth: that
 * namespace), then does exactly what process.exec_command does, in the same
 * order: stdio, cgroup namespace, rlimits, the user namespace, working
 * directory (checked to be inside the root), bounding set, ambient set,
 * capabilities, groups, gid, uid, no_new_privs, the executable's path,
 * seccomp, no fd but stdio, execve.
 *
 * It exists because the process that execs is small: an exec from a copy of
 * a Python process spends most of its time unmapping that process, and the
 * privilege drop takes microseconds here instead of a millisecond.
 *
 * Errors go to fd 4 as one line, in process.py's format:
 *   "\0exec:CODE exec ARGV0: REASON" (126 permission, 127 otherwise), or
 *   "container setup failed: REASON" (exit 125).
 * Plan layout (native byte order; built by exec_helper.encode):
 *   "SKX1", u32 uid, gid, ngroups, nrlimits, argc, envc, filter_len, u64 caps,
 *   u32 groups[ngroups], {u32 resource, u32 0, u64 soft, u64 hard}[nrlimits],
 *   u8 filter[filter_len] (never empty), then NUL-terminated strings: cwd, argv..., env...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SOCK_FD 3
#define ERR_FD 4
#define MAX_PLAN (1 << 20)
#define MAX_LIST 4096
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static char plan[MAX_PLAN];
static char *argv_[MAX_LIST + 1];
static char *envp_[MAX_LIST + 1];
static const char *argv0 = "";

static void say(const char *text, size_t len)
{
    if (len > 4000)
        len = 4000;
    while (len > 0) {
        ssize_t n = write(ERR_FD, text, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        text += n;
        len -= (size_t)n;
    }
}

static void setup_failed(const char *what, int err)
{
    char line[512];
    int n = snprintf(line, sizeof line, "container setup failed: %s%s%s", what, err ? ": " : "",
                     err ? strerror(err) : "");
    say(line, n < 0 ? 0 : (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    _exit(125);
}

/* The command could not be run: 126 for a permission error, 127 otherwise (docker's codes). */
static void exec_failed(int code, const char *reason)
{
    char line[4096];
    line[0] = '\0';
    int n = snprintf(line + 1, sizeof line - 1, "exec:%d exec %s: %s", code, argv0, reason);
    say(line, n < 0 ? 1 : 1 + ((size_t)n < sizeof line - 1 ? (size_t)n : sizeof line - 2));
    _exit(127);
}

static void exec_errno(int err)
{
    exec_failed(err == EACCES || err == EPERM ? 126 : 127, strerror(err));
}

/* A user namespace mapping one id (a user with no /etc/subgid range) denies setgroups: the groups the
   process has are then all it can have, and an empty list asked for is not an error. */
static int setgroups_denied(void)
{
    char text[8] = {0};
    int fd = open("/proc/self/setgroups", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    return n >= 4 && strncmp(text, "deny", 4) == 0;
}

static int sys_close_range(unsigned first, unsigned last)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, first, last, 0) == 0)
        return 0;
#endif
    for (unsigned fd = first; fd < 65536 && fd <= last; fd++)
        close((int)fd);
    return 0;
}

struct reader {
    const char *at, *end;
};

static int take(struct reader *r, void *out, size_t len)
{
    if ((size_t)(r->end - r->at) < len)
        return -1;
    memcpy(out, r->at, len);
    r->at += len;
    return 0;
}

static const char *take_string(struct reader *r)
{
    const char *s = r->at;
    const char *nul = memchr(s, '\0', (size_t)(r->end - r->at));
    if (!nul)
        return NULL;
    r->at = nul + 1;
    return s;
}

static const char *env_get(const char *name)
{
    size_t len = strlen(name);
    for (char **e = envp_; *e; e++)
        if (strncmp(*e, name, len) == 0 && (*e)[len] == '=')
            return *e + len + 1;
    return NULL;
}

/* The executable for argv[0], as process._find_executable finds it. */
static const char *find_executable(const char *name, char *buf, size_t size)
{
    if (strchr(name, '/'))
        return name;
    const char *path = env_get("PATH");
    if (!path)
        path = DEFAULT_PATH;
    for (const char *dir = path;; ) {
        const char *colon = strchr(dir, ':');
        size_t dlen = colon ? (size_t)(colon - dir) : strlen(dir);
        int n = dlen ? snprintf(buf, size, "%.*s/%s", (int)dlen, dir, name) : snprintf(buf, size, "./%s", name);
        struct stat st;
        if (n > 0 && (size_t)n < size && stat(buf, &st) == 0 && S_ISREG(st.st_mode) && access(buf, X_OK) == 0)
            return buf;
        if (!colon)
            break;
        dir = colon + 1;
    }
    exec_failed(127, "executable file not found in $PATH");
    return NULL;
}

int main(void)
{
    /* Nothing in the container may open this process's memory or executable (a host file). */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    fcntl(ERR_FD, F_SETFD, FD_CLOEXEC);
    sys_close_range(ERR_FD + 1, ~0U);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);

    if (send(SOCK_FD, "ready", 5, MSG_NOSIGNAL) != 5)
        _exit(0);
    char control[CMSG_SPACE(4 * sizeof(int))];
    struct iovec iov = {plan, sizeof plan};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    ssize_t got;
    do
        got = recvmsg(SOCK_FD, &msg, MSG_CMSG_CLOEXEC);
    while (got < 0 && errno == EINTR);
    if (got <= 0)
        _exit(0); /* the slot was dropped unused */
    int fds[4] = {-1, -1, -1, -1}, nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            if (nfds == 3 || nfds == 4)
                memcpy(fds, CMSG_DATA(c), (size_t)nfds * sizeof(int));
        }
    if ((nfds != 3 && nfds != 4) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
        setup_failed("the plan came without its stdio", 0);
    int userns = -1; /* the container's user namespace: joined after the rlimits */
    if (nfds == 4 && (userns = fcntl(fds[3], F_DUPFD_CLOEXEC, 10)) < 0)
        setup_failed("user namespace", errno);
    if (nfds == 4)
        close(fds[3]);

    struct reader r = {plan, plan + got};
    char magic[4];
    uint32_t uid, gid, ngroups, nrlimits, argc, envc, filter_len;
    uint64_t caps;
    if (take(&r, magic, 4) || memcmp(magic, "SKX1", 4) || take(&r, &uid, 4) || take(&r, &gid, 4) ||
        take(&r, &ngroups, 4) || take(&r, &nrlimits, 4) || take(&r, &argc, 4) || take(&r, &envc, 4) ||
        take(&r, &filter_len, 4) || take(&r, &caps, 8) || ngroups > MAX_LIST || argc == 0 ||
        argc > MAX_LIST || envc > MAX_LIST || filter_len % sizeof(struct sock_filter) ||
        filter_len == 0 || filter_len / sizeof(struct sock_filter) > BPF_MAXINSNS)
        setup_failed("malformed plan", 0);
    static gid_t groups[MAX_LIST];
    for (uint32_t i = 0; i < ngroups; i++) {
        uint32_t g;
        if (take(&r, &g, 4))
            setup_failed("malformed plan", 0);
        groups[i] = g;
    }
    const char *limits = r.at;
    if ((size_t)(r.end - r.at) < (size_t)nrlimits * 24)
        setup_failed("malformed plan", 0);
    r.at += (size_t)nrlimits * 24;
    static struct sock_filter filter[BPF_MAXINSNS];
    if (take(&r, filter, filter_len))
        setup_failed("malformed plan", 0);
    const char *cwd = take_string(&r);
    for (uint32_t i = 0; i < argc; i++)
        if (!(argv_[i] = (char *)take_string(&r)))
            setup_failed("malformed plan", 0);
    for (uint32_t i = 0; i < envc; i++)
        if (!(envp_[i] = (char *)take_string(&r)))
            setup_failed("malformed plan", 0);
    if (!cwd)
        setup_failed("malformed plan", 0);
    argv_[argc] = NULL;
    envp_[envc] = NULL;
    argv0 = argv_[0];

    /* stdio: out of the way of 0-2 first, in case a received fd landed there */
    int high[3];
    for (int i = 0; i < 3; i++)
        if ((high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 10)) < 0)
            setup_failed("stdio", errno);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    for (int i = 0; i < 3; i++)
        if (dup2(high[i], i) < 0)
            setup_failed("stdio", errno);
    /* run -t: the terminal is ours, a session of our own its controlling terminal (Ctrl-C, job control) */
    if (isatty(0) && (setsid() < 0 || ioctl(0, TIOCSCTTY, 0) < 0))
        setup_failed("controlling terminal", errno);
    close(SOCK_FD);
    /* we are in the container's cgroup now: root our cgroup namespace there */
    if (unshare(CLONE_NEWCGROUP))
        setup_failed("unshare cgroup namespace", errno);

    for (uint32_t i = 0; i < nrlimits; i++) {
        uint32_t resource;
        uint64_t soft, hard;
        memcpy(&resource, limits + 24 * i, 4);
        memcpy(&soft, limits + 24 * i + 8, 8);
        memcpy(&hard, limits + 24 * i + 16, 8);
        struct rlimit rl = {(rlim_t)soft, (rlim_t)hard};
        if (setrlimit((int)resource, &rl))
            exec_errno(errno);
    }
    /* Full capabilities in the container's user namespace, none on the host from here on (a hard
     * rlimit above is raised with the host's CAP_SYS_RESOURCE: set before). */
    if (userns >= 0) {
        if (setns(userns, CLONE_NEWUSER))
            setup_failed("join the user namespace", errno);
        close(userns);
    }
    if (chdir(cwd))
        exec_errno(errno);
    /* "(unreachable)/...": a working directory outside our root (CVE-2024-21626) */
    char here[4096];
    if (!getcwd(here, sizeof here) || here[0] != '/')
        exec_failed(126, "working directory is outside the container");
    /* Bounding set first: dropping needs CAP_SETPCAP, which the next steps may remove. */
    for (int cap = 0; cap < 64; cap++) {
        int has = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (has < 0)
            break; /* past the last capability this kernel knows */
        if (has == 1 && !(caps & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))
            exec_errno(errno);
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
        exec_errno(errno);
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {
        {(uint32_t)caps, (uint32_t)caps, (uint32_t)caps},
        {(uint32_t)(caps >> 32), (uint32_t)(caps >> 32), (uint32_t)(caps >> 32)},
    };
    if (syscall(SYS_capset, &header, data))
        exec_errno(errno);
    if (setgroups(ngroups, groups) && !(errno == EPERM && ngroups == 0 && setgroups_denied()))
        exec_errno(errno);
    if (setgid(gid) || setuid(uid)) /* a non-root uid loses the capabilities */
        exec_errno(errno);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        exec_errno(errno);
    char found[4096];
    const char *executable = find_executable(argv0, found, sizeof found);
    /* as close to exec as possible: close_range and execve follow */
    struct sock_fprog prog = {(unsigned short)(filter_len / sizeof(struct sock_filter)), filter};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0))
        exec_errno(errno);
    /* No host file descriptor survives into the container: only stdio and the error pipe (close-on-exec). */
    sys_close_range(3, ERR_FD - 1);
    sys_close_range(ERR_FD + 1, ~0U);
    execve(executable, argv_, envp_);
    exec_errno(errno);
    return 127;
}
