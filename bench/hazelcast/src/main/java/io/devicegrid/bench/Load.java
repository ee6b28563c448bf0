package io.devicegrid.bench;

import com.hazelcast.client.HazelcastClient;
import com.hazelcast.client.config.ClientConfig;
import com.hazelcast.core.HazelcastInstance;
import com.hazelcast.map.IMap;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Semaphore;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.HdrHistogram.Histogram;

/**
 * Closed-loop load on a Hazelcast cluster through one smart client shared by N threads, the
 * Hazelcast side of dgbench's cells: each thread issues one operation at a time on a random key
 * {@code device-<i>}, first for the warm-up (not counted), then for the measured duration.
 * Prints one JSON line: successful operations, errors, measured seconds and latency percentiles
 * in microseconds.
 *
 * <pre>Load --members HOST:PORT,... --op get|put|shadow|preload --clients N --duration SECONDS
 *      --keys K --value-size B [--warmup SECONDS] [--cluster NAME]</pre>
 */
public final class Load {
    private static final int BATCH = 500;
    private static final int BATCHES_IN_FLIGHT = 4;
    private static final long MAX_MICROS = 60_000_000;

    private final String op;
    private final IMap<String, String> bench;
    private final IMap<String, String> shadows;
    private final String[] keys;
    private final int valueSize;
    private final AtomicLong errors = new AtomicLong();
    private final AtomicInteger reported = new AtomicInteger();

    private Load(HazelcastInstance client, String op, int keys, int valueSize) {
        this.op = op;
        this.bench = client.getMap("bench");
        this.shadows = client.getMap("shadows");
        this.keys = new String[keys];
        for (int i = 0; i < keys; i++) {
            this.keys[i] = "device-" + i;
        }
        this.valueSize = valueSize;
    }

    public static void main(String[] args) throws Exception {
        Cli.quietLogging();
        Cli cli;
        String op;
        int clients, duration, warmup, keys, valueSize;
        try {
            cli = new Cli(args, Set.of("members", "op", "clients", "duration", "keys", "value-size", "warmup", "cluster"));
            op = cli.string("op");
            if (!Set.of("get", "put", "shadow", "preload").contains(op)) {
                throw new IllegalArgumentException("unknown op " + op + " (get, put, shadow, preload)");
            }
            boolean preload = op.equals("preload");
            clients = preload ? 1 : cli.integer("clients");
            duration = preload ? 0 : cli.integer("duration");
            warmup = cli.integer("warmup", 2);
            keys = cli.integer("keys");
            valueSize = cli.integer("value-size");
            if (keys == 0 || clients == 0 || (!preload && duration == 0) || cli.members().isEmpty()) {
                throw new IllegalArgumentException("--members, --keys, --clients and --duration must not be empty or 0");
            }
        } catch (IllegalArgumentException e) {
            System.err.println("Load: " + e.getMessage());
            System.err.println("usage: Load --members HOST:PORT,... --op get|put|shadow|preload --clients N"
                    + " --duration SECONDS --keys K --value-size B [--warmup SECONDS] [--cluster NAME]");
            System.exit(2);
            return;
        }

        ClientConfig config = new ClientConfig().setClusterName(cli.string("cluster", Cli.DEFAULT_CLUSTER));
        config.getNetworkConfig().setAddresses(cli.members());
        config.getConnectionStrategyConfig().getConnectionRetryConfig().setClusterConnectTimeoutMillis(30_000);
        config.getSerializationConfig().addDataSerializableFactory(ShadowProcessor.FACTORY_ID, ShadowProcessor.FACTORY);
        HazelcastInstance client;
        try {
            client = HazelcastClient.newHazelcastClient(config);
        } catch (IllegalStateException e) {
            System.err.println("Load: cannot reach the cluster at " + cli.members() + " within 30 s: " + e.getMessage());
            System.exit(1);
            return;
        }
        int status = 0;
        try {
            Load load = new Load(client, op, keys, valueSize);
            if (op.equals("preload")) {
                load.preload();
            } else {
                load.run(clients, warmup, duration);
            }
        } catch (Exception e) {
            System.err.println("Load: " + op + " failed: " + e);
            status = 1;
        } finally {
            client.shutdown();
        }
        System.exit(status);
    }

    /** Writes every key of {@code bench} once, in putAll batches, a few in flight. */
    private void preload() throws InterruptedException {
        Histogram hist = new Histogram(1, MAX_MICROS, 3);
        Semaphore inFlight = new Semaphore(BATCHES_IN_FLIGHT);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        long start = System.nanoTime();
        for (int from = 0; from < keys.length && failure.get() == null; from += BATCH) {
            Map<String, String> batch = new HashMap<>();
            for (int i = from; i < Math.min(from + BATCH, keys.length); i++) {
                batch.put(keys[i], value(valueSize, 0));
            }
            inFlight.acquire();
            long t0 = System.nanoTime();
            bench.putAllAsync(batch).whenComplete((ok, e) -> {
                if (e != null) {
                    failure.compareAndSet(null, e);
                } else {
                    synchronized (hist) {
                        hist.recordValue(micros(t0, System.nanoTime()));
                    }
                }
                inFlight.release();
            });
        }
        inFlight.acquire(BATCHES_IN_FLIGHT);
        if (failure.get() != null) {
            throw new IllegalStateException("putAll failed", failure.get());
        }
        // Percentiles here are per batch of 500.
        report(1, keys.length, hist, System.nanoTime() - start);
    }

    /** N threads in a closed loop for warmup + duration seconds; only the last duration counts. */
    private void run(int clients, int warmup, int duration) throws InterruptedException {
        long measureFrom = System.nanoTime() + warmup * 1_000_000_000L;
        long end = measureFrom + duration * 1_000_000_000L;
        Histogram[] hists = new Histogram[clients];
        Thread[] threads = new Thread[clients];
        for (int c = 0; c < clients; c++) {
            Histogram hist = hists[c] = new Histogram(1, MAX_MICROS, 3);
            int thread = c;
            threads[c] = new Thread(() -> loop(thread, hist, measureFrom, end), "load-" + c);
            threads[c].start();
        }
        for (Thread t : threads) {
            t.join();
        }
        long elapsed = System.nanoTime() - measureFrom;
        Histogram total = new Histogram(1, MAX_MICROS, 3);
        for (Histogram h : hists) {
            total.add(h);
        }
        report(clients, total.getTotalCount(), total, elapsed);
    }

    /** One thread: operations started in [measureFrom, end) are counted. */
    private void loop(int thread, Histogram hist, long measureFrom, long end) {
        ThreadLocalRandom random = ThreadLocalRandom.current();
        long seq = 0;
        long t0;
        while ((t0 = System.nanoTime()) < end) {
            String key = keys[random.nextInt(keys.length)];
            seq++;
            try {
                once(key, thread, seq);
                if (t0 >= measureFrom) {
                    hist.recordValue(micros(t0, System.nanoTime()));
                }
            } catch (Exception e) {
                if (t0 >= measureFrom) {
                    errors.incrementAndGet();
                }
                if (reported.getAndIncrement() < 3) {
                    System.err.println("error: " + op + " " + key + ": " + e);
                }
            }
        }
    }

    /** One operation; throws on failure. */
    private void once(String key, int thread, long seq) {
        switch (op) {
            case "get" -> {
                if (bench.get(key) == null) {
                    throw new IllegalStateException("no value");
                }
            }
            case "put" -> bench.set(key, value(valueSize, seq));
            case "shadow" -> shadows.executeOnKey(key, new ShadowProcessor((int) (20 + seq % 10), thread, seq));
            default -> throw new IllegalArgumentException(op);
        }
    }

    private void report(int clients, long ops, Histogram hist, long nanos) {
        System.out.printf(Locale.ROOT,
                "{\"op\":\"%s\",\"clients\":%d,\"ops\":%d,\"errors\":%d,\"seconds\":%.3f,"
                        + "\"p50_us\":%d,\"p99_us\":%d,\"p999_us\":%d}%n",
                op, clients, ops, errors.get(), nanos / 1e9,
                hist.getValueAtPercentile(50), hist.getValueAtPercentile(99), hist.getValueAtPercentile(99.9));
        System.out.flush();
    }

    private static long micros(long from, long to) {
        return Math.min(MAX_MICROS, Math.max(1, (to - from) / 1_000));
    }

    /**
     * A JSON document of {@code size} bytes when size leaves room for the fields: byte for byte
     * what dgbench's Rust side sends (serde_json writes the keys in sorted order).
     */
    static String value(int size, long seq) {
        String head = "{\"fw\":\"1.0\",\"pad\":\"";
        String tail = "\",\"seq\":" + seq + "}";
        int pad = Math.max(0, size - head.length() - tail.length());
        return head + "x".repeat(pad) + tail;
    }
}
