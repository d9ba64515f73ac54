/* madvise_range.c: what one MADV_DONTNEED costs as its range grows over pages
 * that are not resident, as when a new coroutine gives back its stack below
 * the entry frame (src/wamr/stack.rs, release_unused_pages) instead of the
 * bottom page alone. Each iteration faults in the bottom page (as the
 * sentinel written back by the previous coroutine leaves it) and the top
 * page, then drops either the bottom page or everything below the top two.
 *
 *   cc -O2 -o /tmp/madvise_range scripts/madvise_range.c && /tmp/madvise_range
 */
#include <sys/mman.h>
#include <stdio.h>
#include <time.h>
#include <string.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){
  size_t sz=256*1024; int N=200000;
  char *p=mmap(0,sz,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  for(int mode=0;mode<4;mode++){
    size_t len = (mode&1)? sz-8192 : 4096;   // 1 page vs all below the top 2 pages
    int dirty2 = mode>=2;                   // also the third page from the top, touched
    double t0=now();
    for(int i=0;i<N;i++){
      p[0]=1;                 // the sentinel's page, as the previous coroutine left it
      p[sz-4096]=1;           // top page (live)
      if(dirty2) p[sz-8192-1]=1;
      madvise(p,len,MADV_DONTNEED);
    }
    double t=now()-t0;
    printf("range %3zu KiB, third page from the top touched=%d: %.0f ns per iteration\n", len/1024, dirty2, t/N*1e9);
  }
}
