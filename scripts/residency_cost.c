/*
 * What asking the kernel which pages of a range are resident costs: a `pread` of
 * /proc/self/pagemap (8 bytes a page) against `mincore` (1 byte a page) over the same range,
 * with three of its pages resident, in a loop. wamr-coro asks twice per connection (an env's
 * reset and a new coroutine's stack trim, src/wamr/residency.rs); this says whether the other
 * call would be cheaper (docs/BENCHMARKS.md, "Three system calls fewer per connection").
 *
 * build: cc -O2 -o /tmp/residency_cost scripts/residency_cost.c
 * usage: residency_cost [PAGES]      (62 by default: a 256 KiB stack below its top two pages)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  size_t pages = argc>1? atoi(argv[1]) : 62;
  size_t len=pages*4096; char*p=mmap(0,len+4096*2,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  p+=4096; p[len-1]=1; p[0]=1; if(pages>10) p[4096*10]=1;
  int fd=open("/proc/self/pagemap",O_RDONLY);
  static uint64_t e[4096]; static unsigned char v[4096]; int N=200000;
  double t=now(); for(int i=0;i<N;i++){ if(pread(fd,e,pages*8,((uintptr_t)p/4096)*8)!=(ssize_t)(pages*8)) return 1;} double a=(now()-t)/N*1e9;
  t=now(); for(int i=0;i<N;i++){ if(mincore(p,len,v)) return 1;} double b=(now()-t)/N*1e9;
  printf("%zu pages: pagemap pread %.0f ns, mincore %.0f ns\n",pages,a,b);
}
