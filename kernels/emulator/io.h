// Raw little-endian arrays in and out of the emulator drivers: `dir/name.bin`, no header (the test
// that writes them knows the shapes).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

template <class T>
std::vector<T> read_array(const std::string& dir, const char* name) {
    const std::string path = dir + "/" + name + ".bin";
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) {
        fprintf(stderr, "emulator driver: cannot open %s\n", path.c_str());
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    const long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    std::vector<T> v(bytes / sizeof(T));
    if (bytes % sizeof(T) != 0 || fread(v.data(), sizeof(T), v.size(), f) != v.size()) {
        fprintf(stderr, "emulator driver: %s: %ld bytes is not a whole array\n", path.c_str(), bytes);
        exit(2);
    }
    fclose(f);
    return v;
}

template <class T>
void write_array(const std::string& dir, const char* name, const std::vector<T>& v) {
    const std::string path = dir + "/" + name + ".bin";
    FILE* f = fopen(path.c_str(), "wb");
    if (!f || fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) {
        fprintf(stderr, "emulator driver: cannot write %s\n", path.c_str());
        exit(2);
    }
    fclose(f);
}
