    gpu.func @{{name}}(%src: memref<?xvector<4xi32>>, %wt: memref<?xvector<4xi32>>, %lists: memref<?xi32>, %counts: memref<?xi32>, %dst: memref<?xbf16>) workgroup(%xs: memref<{{pass_words}}xvector<4xi32>, 3>) kernel {
{{b}}      gpu.return
    }
