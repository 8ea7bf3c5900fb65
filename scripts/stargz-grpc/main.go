// containerd-stargz-grpc, built by scripts/container-deps.sh: stargz-snapshotter's daemon,
// wired from its main module's `service` package as its cmd/containerd-stargz-grpc/main.go does
// (that cmd module is not served by the Go module proxy; the main module is). No CRI or
// kubeconfig keychains, no fuse manager. Flags: --address, --config, --root, --log-level.
package main

import (
	"context"
	"flag"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/BurntSushi/toml"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "gRPC socket")
	configPath := flag.String("config", "", "config TOML")
	rootDir := flag.String("root", "/var/lib/containerd-stargz-grpc", "root directory")
	logLevel := flag.String("log-level", "info", "log level")
	flag.Parse()
	lvl, err := logrus.ParseLevel(*logLevel)
	if err != nil {
		logrus.Fatal(err)
	}
	logrus.SetLevel(lvl)
	ctx := log.WithLogger(context.Background(), log.L)
	var config service.Config
	if *configPath != "" {
		if _, err := toml.DecodeFile(*configPath, &config); err != nil {
			log.G(ctx).WithError(err).Fatalf("config %q", *configPath)
		}
	}
	rs, err := service.NewStargzSnapshotterService(ctx, *rootDir, &config)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("snapshotter")
	}
	defer rs.Close()
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(rs))
	if err := os.MkdirAll(filepath.Dir(*address), 0o700); err != nil {
		log.G(ctx).WithError(err).Fatal("socket dir")
	}
	os.RemoveAll(*address)
	l, err := net.Listen("unix", *address)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("listen")
	}
	go func() {
		if err := rpc.Serve(l); err != nil {
			log.G(ctx).WithError(err).Fatal("serve")
		}
	}()
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	<-c
}
