package io.devicegrid.bench;

import com.hazelcast.config.Config;
import com.hazelcast.config.InMemoryFormat;
import com.hazelcast.config.JoinConfig;
import com.hazelcast.config.MapConfig;
import com.hazelcast.config.NetworkConfig;
import com.hazelcast.core.Hazelcast;
import java.util.List;
import java.util.Set;

/**
 * One Hazelcast member on 127.0.0.1:PORT, joining the other members over TCP/IP. Prints
 * {@code ready} once the cluster has all the listed members, then runs until SIGTERM
 * (Hazelcast's own shutdown hook stops it).
 *
 * <pre>Member --port P --members 127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3 [--cluster NAME]</pre>
 */
public final class Member {
    /** Maps of the benchmark: 2 synchronous backups, serialized values, reads from the owner. */
    static final List<String> MAPS = List.of("bench", "shadows");

    public static void main(String[] args) {
        Cli.quietLogging();
        Config config;
        try {
            Cli cli = new Cli(args, Set.of("port", "members", "cluster"));
            config = config(cli.integer("port"), cli.members(), cli.string("cluster", Cli.DEFAULT_CLUSTER));
        } catch (IllegalArgumentException e) {
            System.err.println("Member: " + e.getMessage());
            System.err.println("usage: Member --port P --members HOST:PORT,... [--cluster NAME]");
            System.exit(2);
            return;
        }
        // Returns once hazelcast.initial.min.cluster.size members have joined.
        Hazelcast.newHazelcastInstance(config);
        System.out.println("ready");
        System.out.flush();
    }

    static Config config(int port, List<String> members, String cluster) {
        Config config = new Config().setClusterName(cluster);
        config.setProperty("hazelcast.phone.home.enabled", "false");
        config.setProperty("hazelcast.socket.bind.any", "false");
        config.setProperty("hazelcast.initial.min.cluster.size", Integer.toString(members.size()));
        config.getJetConfig().setEnabled(false);

        NetworkConfig network = config.getNetworkConfig().setPort(port).setPortAutoIncrement(false);
        network.getInterfaces().setEnabled(true).addInterface("127.0.0.1");
        JoinConfig join = network.getJoin();
        join.getMulticastConfig().setEnabled(false);
        join.getAutoDetectionConfig().setEnabled(false);
        join.getTcpIpConfig().setEnabled(true).setMembers(members);

        for (String name : MAPS) {
            config.addMapConfig(new MapConfig(name)
                    .setBackupCount(2)
                    .setAsyncBackupCount(0)
                    .setInMemoryFormat(InMemoryFormat.BINARY)
                    .setReadBackupData(false));
        }
        config.getSerializationConfig().addDataSerializableFactory(ShadowProcessor.FACTORY_ID, ShadowProcessor.FACTORY);
        return config;
    }
}
