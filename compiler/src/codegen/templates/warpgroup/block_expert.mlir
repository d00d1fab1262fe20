{{constants}}
      %e = gpu.block_id y
      %nb = gpu.block_id x
      %cnt32 = memref.load %counts[%e] : memref<?xi32>
      %cnt = arith.index_cast %cnt32 : i32 to index
      %any = arith.cmpi ugt, %cnt, %c0 : index
      scf.if %any {
        %lbase = arith.muli %e, %cS : index
        %first32 = memref.load %lists[%lbase] : memref<?xi32>
        %firsts = arith.index_cast %first32 : i32 to index
        %nb0 = arith.muli %nb, %cB : index
        %eN = arith.muli %e, %cN : index
{{copy_addresses}}
