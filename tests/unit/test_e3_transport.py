"""The UCX transport read from an engine log, and the link ceiling probe's refusals (no GPU here)."""

from context_research.disagg.transport import kv_transport, link_ceiling_gb_s, ucx_protocols

# As vLLM 0.26.0's decode engine printed it on one H200 with NIXL 1.5.1 (UCX_PROTO_INFO=y).
H200_TCP = """\
[1795966369.52] [vm:1740 :6]   +--------+--------------------+-----------------------------------------+
[1795966369.52] [vm:1740 :6]   | a404b891-bf6a-4ad3-8e69-91fcf15 intra-node cfg#2                      |
[1795966369.52] [vm:1740 :6]   | remote memory read by ucp_get*(multi) into cuda/GPU0 from cuda/dev[1] |
[1795966369.52] [vm:1740 :6]   +--------+--------------------+-----------------------------------------+
[1795966369.52] [vm:1740 :6]   | Range  |    Description     |                 Config                  |
[1795966369.52] [vm:1740 :6]   +--------+--------------------+-----------------------------------------+
[1795966369.52] [vm:1740 :6]   | 0..inf | software emulation | tcp/lo                                  |
[1795966369.52] [vm:1740 :6]   +--------+--------------------+-----------------------------------------+
[1795966369.52] [vm:1740 :0]   | remote memory write by ucp_put* from host memory to host |
[1795966369.52] [vm:1740 :0]   | 0..inf | zero-copy   | cma/memory                        |
"""


def test_protocols_are_read_per_operation():
    protos = ucx_protocols(H200_TCP)
    assert protos == [
        {"operation": "remote memory read by ucp_get*(multi) into cuda/GPU0 from cuda/dev[1]",
         "description": "software emulation", "transport": "tcp/lo"},
        {"operation": "remote memory write by ucp_put* from host memory to host", "description": "zero-copy",
         "transport": "cma/memory"}]


def test_gpu_reads_over_tcp_are_flagged_as_slower_than_the_host_allows():
    t = kv_transport(H200_TCP)
    assert t["available"] and t["transports"] == ["tcp/lo"] and t["slower_than_host_allows"] is True
    assert "slower than CUDA IPC or NVLink" in t["note"]


def test_gpu_reads_over_cuda_ipc_are_not_flagged():
    log = H200_TCP.replace("software emulation", "zero-copy         ").replace("tcp/lo ", "cuda_ipc/cuda")
    t = kv_transport(log)
    assert t["transports"] == ["cuda_ipc/cuda"] and t["slower_than_host_allows"] is False


def test_no_protocol_lines_say_so():
    t = kv_transport("INFO engine started\n")
    assert t["available"] is False and "UCX_PROTO_INFO" in t["reason"]


def test_the_ceiling_probe_without_a_gpu_gives_a_reason():
    c = link_ceiling_gb_s("cuda:0", "cuda:0")
    assert c["available"] is False and c["reason"]


# As UCX prints a GPU-to-GPU put (NIXL push: the prefill engine WRITEs into the decode engine's blocks).
PUSH_CUDA_IPC = """\
[1795966369.52] [vm:1741 :6]   | remote memory write by ucp_put*(multi) from cuda/GPU0 to cuda/dev[1] |
[1795966369.52] [vm:1741 :6]   | 0..inf | zero-copy          | cuda_ipc/cuda                           |
[1795966369.52] [vm:1741 :0]   | remote memory write by ucp_put* from host memory to cuda/dev[1] |
[1795966369.52] [vm:1741 :0]   | 0..inf | copy-in            | tcp/lo                                  |
"""


def test_push_writes_are_read_from_the_prefill_engine_log():
    t = kv_transport(PUSH_CUDA_IPC, "write")
    assert t["available"] and t["engine"] == "prefill" and t["direction"] == "write"
    assert t["transports"] == ["cuda_ipc/cuda"] and t["slower_than_host_allows"] is False   # the host write is not counted
    assert t["note"] == "GPU-to-GPU KV writes (prefill engine) went over cuda_ipc/cuda"
    slow = kv_transport(PUSH_CUDA_IPC.replace("zero-copy         ", "software emulation").replace(
        "cuda_ipc/cuda", "tcp/lo       "), "write")
    assert slow["slower_than_host_allows"] is True and slow["transports"] == ["tcp/lo"]


def test_a_direction_finds_only_its_own_operations():
    assert kv_transport(PUSH_CUDA_IPC, "read")["available"] is False
    missing = kv_transport(H200_TCP, "write")
    assert missing["available"] is False and "prefill engine log" in missing["reason"]
    assert kv_transport(H200_TCP, "files") == {"available": False, "direction": "files",
                                               "reason": "the KV moves by files, not by a UCX read or write"}
