/* A real Boehm GC program for tests/gc.rs: THREADS threads registered with libgc (GC_THREADS
 * makes pthread_create GC_pthread_create) allocate garbage until the collector has run at
 * least MIN_COLLECTIONS times. It follows lavtrace's start protocol (lavtrace-common's
 * start.rs): `ready PID`, wait for a line on stdin, work, then prints libgc's own count of
 * the collections made during the work (GC_get_gc_no after minus before) and `done`.
 *
 * Every collection is made while all threads are registered: each waits for the others at
 * a barrier before allocating and after, and the count is read before any exits, so every
 * collection stopped at least one other thread with signals (with one registered thread
 * bdwgc sends none).
 *
 * Build: cc -O1 -o boehm boehm.c -lgc -lpthread   (Debian: libgc-dev) */
#define GC_THREADS
#include <gc.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define THREADS 4
#define MIN_COLLECTIONS 20

static pthread_barrier_t start, end;

struct node {
    struct node *next;
    char payload[240];
};

static void *worker(void *arg)
{
    pthread_barrier_wait(&start);
    /* Lists of 1000 nodes, dropped and rebuilt: garbage at a steady rate. */
    while (GC_get_gc_no() < (GC_word)(uintptr_t)arg) {
        struct node *head = NULL;
        for (int i = 0; i < 1000; i++) {
            struct node *n = GC_MALLOC(sizeof *n);
            n->next = head;
            head = n;
        }
    }
    pthread_barrier_wait(&end);
    /* Stay registered until main has read the count. */
    pthread_barrier_wait(&end);
    return NULL;
}

int main(void)
{
    GC_INIT();
    pthread_barrier_init(&start, NULL, THREADS + 1);
    pthread_barrier_init(&end, NULL, THREADS + 1);
    GC_word before = GC_get_gc_no();
    pthread_t t[THREADS];
    GC_word goal = before + MIN_COLLECTIONS;
    for (int i = 0; i < THREADS; i++) {
        if (pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)goal) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return 1;
    before = GC_get_gc_no();
    pthread_barrier_wait(&start);
    pthread_barrier_wait(&end);
    GC_word after = GC_get_gc_no();
    pthread_barrier_wait(&end);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    printf("collections %lu\n", (unsigned long)(after - before));
    printf("done\n");
    fflush(stdout);
    return 0;
}
