        %plane = arith.subi %tid, %c256 : index
        %prow = arith.divui %plane, %c8 : index
        %lead = arith.cmpi eq, %plane, %c0 : index
        %tmx = memref.extract_aligned_pointer_as_index %tmap : memref<?xi64> -> index
        %tm = arith.index_cast %tmx : index to i64
        %cWB = arith.constant {{expected_bytes}} : i32
{{row_map}}
