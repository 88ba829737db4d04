package main

import (
	"context"
	"errors"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/backup-proxy/backup-proxy/metrics"
)

// startMetrics serves g at http://addr/metrics until stop; with addr empty
// it does nothing. The listener is opened before it returns, so a taken
// port fails the start.
func startMetrics(log *zap.Logger, addr string, g prometheus.Gatherer) (stop func(context.Context) error, bound net.Addr, err error) {
	if addr == "" {
		return func(context.Context) error { return nil }, nil, nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	srv := metrics.NewServer(log, g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", zap.Error(err))
		}
	}()
	log.Info("serving metrics", zap.String("addr", lis.Addr().String()))
	return func(ctx context.Context) error {
		err := srv.Shutdown(ctx)
		if err != nil {
			srv.Close() // the deadline passed: drop the scrapes in flight
		}
		<-done
		return err
	}, lis.Addr(), nil
}
