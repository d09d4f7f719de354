# A simulated ``esp32`` module for the host harness (installed with --world): what
# edgemcp.device's health reads of it. ``idf_heap_info(capabilities)`` gives, per ESP-IDF heap
# region, (total, free, largest free block, least free ever) in bytes, as the ESP32 port does
# (ports/esp32/modesp32.c of MicroPython 1.27). The figures are a plain ESP32 with Wi-Fi up
# and a grown MicroPython heap. Nothing here is copied to a board (the firmware has esp32).
HEAP_DATA = 4  # MALLOC_CAP_8BIT

REGIONS = [(113200, 27400, 21504, 18100), (15072, 14980, 14336, 14800)]


def idf_heap_info(capabilities):
    return list(REGIONS)
