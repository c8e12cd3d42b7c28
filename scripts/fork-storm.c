/*
 * fork-storm: the sensor bench's spawner. Forks and execs a short program (/bin/true by
 * default) COUNT times from LOOPS parallel loops, paced to RATE execs per second in total, and
 * writes every child's pid to a file so the bench can tell the storm's processes from the rest
 * of the machine's.
 *
 *   fork-storm [-n COUNT] [-r RATE] [-l LOOPS] [-p PIDFILE] [-x PROGRAM]
 *
 * Each loop is its own process: fork, exec in the child, wait for it, next. Loops pace
 * themselves on absolute CLOCK_MONOTONIC deadlines (RATE/LOOPS each), so a slow iteration is
 * caught up rather than stretching the storm; RATE 0 means as fast as possible. At the end one
 * line of JSON goes to stdout: {"children":…,"failed":…,"seconds":…,"rate":…}.
 *
 * Written in C, not Rust, so the spawner costs next to nothing and its own start-up does not
 * show in the storm: it is a plain fork/execve/waitpid loop like a shell script's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void usage(void)
{
	fprintf(stderr, "usage: fork-storm [-n COUNT] [-r RATE] [-l LOOPS] [-p PIDFILE] [-x PROGRAM]\n");
	exit(2);
}

static long parse(const char *s, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 0) {
		fprintf(stderr, "fork-storm: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void add_ns(struct timespec *t, long long ns)
{
	long long total = (long long)t->tv_nsec + ns;

	t->tv_sec += total / 1000000000LL;
	t->tv_nsec = total % 1000000000LL;
}

/* One loop: `count` children, one every `interval_ns` (0: no pacing). Writes the pids to
 * `pidfd` in one append at the end (so loops never interleave inside a line) and exits with
 * the number of failed children, capped at 255. */
static void run_loop(long count, long long interval_ns, int pidfd, const char *program)
{
	char *const argv[] = { (char *)program, NULL };
	/* 11 bytes per pid: up to 10 digits and a newline. */
	char *pids = malloc((size_t)count * 11 + 1);
	size_t used = 0;
	long failed = 0;
	struct timespec next;

	if (!pids) {
		perror("fork-storm: malloc");
		_exit(255);
	}
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (long i = 0; i < count; i++) {
		pid_t child;
		int status;

		if (interval_ns > 0) {
			while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
				;
			add_ns(&next, interval_ns);
		}
		child = fork();
		if (child < 0) {
			failed++;
			continue;
		}
		if (child == 0) {
			execv(program, argv);
			_exit(127);
		}
		used += (size_t)snprintf(pids + used, 12, "%d\n", (int)child);
		while (waitpid(child, &status, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	if (pidfd >= 0 && used > 0 && write(pidfd, pids, used) != (ssize_t)used)
		perror("fork-storm: writing pids");
	_exit(failed > 255 ? 255 : (int)failed);
}

int main(int argc, char **argv)
{
	long count = 20000, rate = 1900, loops = 4;
	const char *pidfile = NULL, *program = "/bin/true";
	long spawned = 0, failed = 0;
	int pidfd = -1, opt;
	double start, seconds;

	while ((opt = getopt(argc, argv, "n:r:l:p:x:h")) != -1) {
		switch (opt) {
		case 'n': count = parse(optarg, "count"); break;
		case 'r': rate = parse(optarg, "rate"); break;
		case 'l': loops = parse(optarg, "loops"); break;
		case 'p': pidfile = optarg; break;
		case 'x': program = optarg; break;
		default: usage();
		}
	}
	if (optind != argc || loops < 1 || loops > 64)
		usage();
	if (pidfile) {
		pidfd = open(pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
		if (pidfd < 0) {
			perror("fork-storm: opening the pid file");
			return 1;
		}
	}

	start = now_s();
	for (long l = 0; l < loops; l++) {
		/* Spread the remainder over the first loops. */
		long share = count / loops + (l < count % loops ? 1 : 0);
		long long interval = rate > 0 ? 1000000000LL * loops / rate : 0;
		pid_t loop = fork();

		if (loop < 0) {
			perror("fork-storm: fork");
			return 1;
		}
		if (loop == 0)
			run_loop(share, interval, pidfd, program);
		spawned += share;
	}
	for (long l = 0; l < loops; l++) {
		int status;

		if (wait(&status) < 0)
			break;
		if (WIFEXITED(status))
			failed += WEXITSTATUS(status);
		else
			failed++;
	}
	seconds = now_s() - start;
	printf("{\"children\":%ld,\"failed\":%ld,\"seconds\":%.3f,\"rate\":%.0f}\n", spawned, failed,
	       seconds, seconds > 0 ? (double)spawned / seconds : 0.0);
	return 0;
}
