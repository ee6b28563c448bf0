package io.devicegrid.bench;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.hazelcast.map.EntryProcessor;
import com.hazelcast.nio.ObjectDataInput;
import com.hazelcast.nio.ObjectDataOutput;
import com.hazelcast.nio.serialization.DataSerializableFactory;
import com.hazelcast.nio.serialization.IdentifiedDataSerializable;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.Map;

/**
 * The device-shadow update, run on the member that owns the key (and, as Hazelcast does by
 * default, on its backups): the value is {@code {"reported":{...},"version":N}}; it sets
 * reported.temp, .client and .seq, increments version and returns the new version. An absent
 * entry starts from {@code {"reported":{},"version":0}}.
 */
public final class ShadowProcessor implements EntryProcessor<String, String, Long>, IdentifiedDataSerializable {
    static final int FACTORY_ID = 7001;
    static final int CLASS_ID = 1;
    private static final long serialVersionUID = 1L; // EntryProcessor is Serializable; not used

    /** Registered in both member and client serialization configs. */
    static final DataSerializableFactory FACTORY = id -> id == CLASS_ID ? new ShadowProcessor() : null;

    private static final ObjectMapper JSON = new ObjectMapper();

    private int temp;
    private int client;
    private long seq;

    public ShadowProcessor() {
    }

    public ShadowProcessor(int temp, int client, long seq) {
        this.temp = temp;
        this.client = client;
        this.seq = seq;
    }

    @Override
    public Long process(Map.Entry<String, String> entry) {
        try {
            ObjectNode doc = entry.getValue() == null
                    ? JSON.createObjectNode()
                    : (ObjectNode) JSON.readTree(entry.getValue());
            doc.withObjectProperty("reported").put("temp", temp).put("client", client).put("seq", seq);
            long version = doc.path("version").asLong(0) + 1;
            doc.put("version", version);
            entry.setValue(JSON.writeValueAsString(doc));
            return version;
        } catch (JsonProcessingException e) {
            throw new UncheckedIOException("shadow " + entry.getKey() + " is not a JSON object", e);
        }
    }

    @Override
    public void writeData(ObjectDataOutput out) throws IOException {
        out.writeInt(temp);
        out.writeInt(client);
        out.writeLong(seq);
    }

    @Override
    public void readData(ObjectDataInput in) throws IOException {
        temp = in.readInt();
        client = in.readInt();
        seq = in.readLong();
    }

    @Override
    public int getFactoryId() {
        return FACTORY_ID;
    }

    @Override
    public int getClassId() {
        return CLASS_ID;
    }
}
