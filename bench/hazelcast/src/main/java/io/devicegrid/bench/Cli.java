package io.devicegrid.bench;

import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.logging.Level;
import java.util.logging.Logger;

/** What Member and Load share: `--name value` options, the member list and quiet logging. */
final class Cli {
    static final String DEFAULT_CLUSTER = "devicegrid-bench";

    private final Map<String, String> options = new HashMap<>();

    /** Parses `--name value` pairs; only names in {@code known} are accepted. */
    Cli(String[] args, Set<String> known) {
        for (int i = 0; i < args.length; i += 2) {
            String name = args[i].startsWith("--") ? args[i].substring(2) : null;
            if (name == null || !known.contains(name)) {
                throw new IllegalArgumentException("unknown argument " + args[i]);
            }
            if (i + 1 >= args.length) {
                throw new IllegalArgumentException("missing value for " + args[i]);
            }
            options.put(name, args[i + 1]);
        }
    }

    String string(String name) {
        String v = options.get(name);
        if (v == null) {
            throw new IllegalArgumentException("missing --" + name);
        }
        return v;
    }

    String string(String name, String otherwise) {
        return options.getOrDefault(name, otherwise);
    }

    int integer(String name) {
        return parse(name, string(name));
    }

    int integer(String name, int otherwise) {
        return options.containsKey(name) ? parse(name, options.get(name)) : otherwise;
    }

    /** `--members host:port,host:port,...` as a list. */
    List<String> members() {
        return Arrays.stream(string("members").split(",")).map(String::trim).filter(s -> !s.isEmpty()).toList();
    }

    private static int parse(String name, String value) {
        try {
            int n = Integer.parseInt(value);
            if (n < 0) {
                throw new NumberFormatException();
            }
            return n;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("--" + name + " must be a non-negative integer, not " + value);
        }
    }

    /** Hazelcast logs through java.util.logging (to stderr), warnings and errors only. */
    static void quietLogging() {
        System.setProperty("hazelcast.logging.type", "jdk");
        Logger.getLogger("").setLevel(Level.WARNING);
    }
}
