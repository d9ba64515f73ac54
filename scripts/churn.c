/* churn.c: connection churn, closed loop: T threads, each connecting, sending
 * one HTTP/1.1 request, reading the whole answer (by its Content-Length) and
 * closing (with an RST, so that TIME_WAIT sockets do not pile up), for D
 * seconds. Prints connections (= requests) per second. What wrk cannot do
 * against a guest that keeps connections open.
 *
 *   cc -O2 -o /tmp/churn scripts/churn.c -lpthread
 *   /tmp/churn PORT THREADS SECONDS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <stdatomic.h>
static int port; static double dur; static atomic_long done, errs;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void *run(void *a){
  (void)a;
  const char *req="GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  struct sockaddr_in sa={0}; sa.sin_family=AF_INET; sa.sin_port=htons(port); sa.sin_addr.s_addr=htonl(0x7f000001);
  double end=now()+dur; char buf[4096];
  while(now()<end){
    int fd=socket(AF_INET,SOCK_STREAM,0);
    struct linger l={1,0}; setsockopt(fd,SOL_SOCKET,SO_LINGER,&l,sizeof l); // RST on close: no TIME_WAIT pile-up
    if(connect(fd,(void*)&sa,sizeof sa)){errs++;close(fd);continue;}
    if(write(fd,req,strlen(req))<0){errs++;close(fd);continue;}
    int got=0, want=-1;
    while(want<0||got<want){
      int n=read(fd,buf+got,sizeof buf-got); if(n<=0){errs++;break;} got+=n;
      char *h=memmem(buf,got,"\r\n\r\n",4);
      if(h&&want<0){char *cl=memmem(buf,got,"Content-Length: ",16); want=(h-buf)+4+(cl?atoi(cl+16):0);}
    }
    if(want>=0&&got>=want) done++;
    close(fd);
  }
  return 0;
}
int main(int c,char**v){
  port=atoi(v[1]); int T=atoi(v[2]); dur=atof(v[3]);
  pthread_t t[256]; for(int i=0;i<T;i++) pthread_create(&t[i],0,run,0);
  for(int i=0;i<T;i++) pthread_join(t[i],0);
  printf("%.0f conn/s (%ld errors)\n", done/dur, (long)errs);
}
