            %cW = arith.constant {{width}} : index
            %zero = arith.constant 0.0 : f32
            %dstx = memref.extract_aligned_pointer_as_index %dst : memref<?xbf16> -> index
            %pair0 = llvm.mlir.undef : vector<2xbf16>
            %lane0 = llvm.mlir.constant(0 : i32) : i32
            %lane1 = llvm.mlir.constant(1 : i32) : i32
