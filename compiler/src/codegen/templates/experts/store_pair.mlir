        %s16 = arith.constant 16 : i32
        %hi = arith.shli %w1, %s16 : i32
        %word = arith.ori %w0, %hi : i32
        memref.store %word, %out[%i] : memref<?xi32>
