          %idf{{sfx}} = memref.load %ids[{{slot}}] : memref<?xf32>
          %id{{sfx}} = arith.fptosi %idf{{sfx}} : f32 to i64
          %loc{{sfx}} = arith.subi %id{{sfx}}, %first64 : i64
          %wv{{sfx}} = memref.load %w[{{slot}}] : memref<?xf32>
          %nz{{sfx}} = arith.cmpf une, %wv{{sfx}}, %zero : f32
          %ge{{sfx}} = arith.cmpi sge, %loc{{sfx}}, %z64 : i64
          %lt{{sfx}} = arith.cmpi slt, %loc{{sfx}}, %cE64 : i64
          %local{{sfx}} = arith.andi %ge{{sfx}}, %lt{{sfx}} : i1
