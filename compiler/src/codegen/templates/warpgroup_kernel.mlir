    gpu.func @{{name}}(%src: memref<?xvector<4xi32>>, %wt: memref<?xvector<4xi32>>, %lists: memref<?xi32>, %counts: memref<?xi32>, %dst: memref<?xbf16>{{tmap}}) kernel attributes {nvvm.maxntid = array<i32: {{threads}}, 1, 1>} {
{{b}}      gpu.return
    }
